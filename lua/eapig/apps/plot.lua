-- A small SVG line plot (no dependencies): faithfulness against circuit size. The x axis can be
-- logarithmic, since circuit sizes span 0.1% to 100% of the edges.
local M = {}

local function esc(s)
  return (tostring(s):gsub("&", "&amp;"):gsub("<", "&lt;"):gsub(">", "&gt;"):gsub('"', "&quot;"))
end

local function nice_ticks(lo, hi, n)
  local span = hi - lo
  if span <= 0 then return { lo } end
  local step = 10 ^ math.floor(math.log10(span / n))
  for _, m in ipairs({ 1, 2, 5, 10 }) do
    if span / (step * m) <= n then step = step * m break end
  end
  local ticks = {}
  for t = math.ceil(lo / step) * step, hi + step * 1e-9, step do ticks[#ticks + 1] = t end
  return ticks
end

local COLOURS = { "#1f77b4", "#d62728", "#2ca02c", "#9467bd" }

-- svg(points, opts): points = {{x=, y=}, ...}; opts: title, xlabel, ylabel, logx, hline (a y
-- value drawn dashed, e.g. 1 for full faithfulness), label (the legend entry of the line),
-- hline_label (the legend entry of hline), series (several lines: {{points =, label =}, ...},
-- drawn instead of `points`). A legend is drawn when any line or hline has a label. Returns the
-- SVG text.
function M.svg(points, opts)
  opts = opts or {}
  local series = opts.series or { { points = points, label = opts.label } }
  local W, H, left, right, top, bottom = 640, 400, 70, 20, 40, 60
  local xs, ys = {}, {}
  for _, sr in ipairs(series) do
    for _, p in ipairs(sr.points) do
      xs[#xs + 1] = opts.logx and math.log10(p.x) or p.x
      ys[#ys + 1] = p.y
    end
  end
  local xmin, xmax = math.min(unpack(xs)), math.max(unpack(xs))
  local ymin, ymax = math.min(0, unpack(ys)), math.max(1, unpack(ys))
  if xmax == xmin then xmax = xmin + 1 end
  local function px(x) return left + (x - xmin) / (xmax - xmin) * (W - left - right) end
  local function py(y) return H - bottom - (y - ymin) / (ymax - ymin) * (H - top - bottom) end
  local out = {}
  local function add(fmt, ...) out[#out + 1] = fmt:format(...) end
  add('<?xml version="1.0" encoding="UTF-8"?>\n')
  add('<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="sans-serif" font-size="12">\n', W, H, W, H)
  add('<rect x="0" y="0" width="%d" height="%d" fill="white"/>\n', W, H)
  if opts.title then add('<text x="%d" y="24" text-anchor="middle" font-size="15">%s</text>\n', W / 2, esc(opts.title)) end
  add('<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="black"/>\n', left, H - bottom, W - right, H - bottom)
  add('<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="black"/>\n', left, top, left, H - bottom)
  for _, t in ipairs(nice_ticks(ymin, ymax, 6)) do
    add('<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#ddd"/>\n', left, py(t), W - right, py(t))
    add('<text x="%d" y="%.1f" text-anchor="end">%s</text>\n', left - 6, py(t) + 4, ("%g"):format(t))
  end
  local xticks = {}
  if opts.logx then
    for e = math.floor(xmin), math.ceil(xmax) do xticks[#xticks + 1] = e end
  else
    xticks = nice_ticks(xmin, xmax, 8)
  end
  for _, t in ipairs(xticks) do
    if t >= xmin - 1e-9 and t <= xmax + 1e-9 then
      local label = opts.logx and ("%g"):format(10 ^ t) or ("%g"):format(t)
      add('<text x="%.1f" y="%d" text-anchor="middle">%s</text>\n', px(t), H - bottom + 18, label)
    end
  end
  if opts.hline and opts.hline >= ymin and opts.hline <= ymax then
    add('<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="gray" stroke-dasharray="4 4"/>\n', left,
      py(opts.hline), W - right, py(opts.hline))
  end
  if opts.xlabel then add('<text x="%d" y="%d" text-anchor="middle">%s</text>\n', (left + W - right) / 2, H - 18, esc(opts.xlabel)) end
  if opts.ylabel then
    add('<text x="18" y="%d" text-anchor="middle" transform="rotate(-90 18 %d)">%s</text>\n', (top + H - bottom) / 2,
      (top + H - bottom) / 2, esc(opts.ylabel))
  end
  local function X(x) return px(opts.logx and math.log10(x) or x) end
  for k, sr in ipairs(series) do
    local colour = COLOURS[(k - 1) % #COLOURS + 1]
    local coords = {}
    for i, p in ipairs(sr.points) do coords[i] = ("%.1f,%.1f"):format(X(p.x), py(p.y)) end
    add('<polyline fill="none" stroke="%s" stroke-width="2" points="%s"/>\n', colour, table.concat(coords, " "))
    for _, p in ipairs(sr.points) do
      add('<circle class="point" cx="%.1f" cy="%.1f" r="3.5" fill="%s" data-x="%.9g" data-y="%.9g"/>\n',
        X(p.x), py(p.y), colour, p.x, p.y)
    end
  end
  -- The legend, top left inside the plot (faithfulness curves rise to the right).
  local entries = {}
  for k, sr in ipairs(series) do
    if sr.label then entries[#entries + 1] = { label = sr.label, colour = COLOURS[(k - 1) % #COLOURS + 1] } end
  end
  if opts.hline_label and opts.hline then entries[#entries + 1] = { label = opts.hline_label, dashed = true } end
  if #entries > 0 then
    local x0, y0 = left + 12, top + 8
    add('<g class="legend">\n')
    add('<rect x="%d" y="%d" width="%d" height="%d" fill="white" stroke="#999"/>\n', x0, y0, 250, 8 + 18 * #entries)
    for i, e in ipairs(entries) do
      local y = y0 + 4 + 18 * (i - 1) + 9
      if e.dashed then
        add('<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="gray" stroke-dasharray="4 4"/>\n', x0 + 8, y, x0 + 32, y)
      else
        add('<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="%s" stroke-width="2"/>\n', x0 + 8, y, x0 + 32, y, e.colour)
      end
      add('<text x="%d" y="%d">%s</text>\n', x0 + 40, y + 4, esc(e.label))
    end
    add('</g>\n')
  end
  add('</svg>\n')
  return table.concat(out)
end

-- Writes text through a temporary file renamed into place (no partial output).
function M.write(path, text)
  return require("eapig.formats.files").write_atomic(path, "plot", text)
end

return M
