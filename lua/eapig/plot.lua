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

-- svg(points, opts): points = {{x=, y=}, ...}; opts: title, xlabel, ylabel, logx, hline (a y
-- value drawn dashed, e.g. 1 for full faithfulness). Returns the SVG text.
function M.svg(points, opts)
  opts = opts or {}
  local W, H, left, right, top, bottom = 640, 400, 70, 20, 40, 60
  local xs, ys = {}, {}
  for i, p in ipairs(points) do
    xs[i] = opts.logx and math.log10(p.x) or p.x
    ys[i] = p.y
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
  local coords = {}
  for i = 1, #points do coords[i] = ("%.1f,%.1f"):format(px(xs[i]), py(ys[i])) end
  add('<polyline fill="none" stroke="#1f77b4" stroke-width="2" points="%s"/>\n', table.concat(coords, " "))
  for i, p in ipairs(points) do
    add('<circle class="point" cx="%.1f" cy="%.1f" r="3.5" fill="#1f77b4" data-x="%.9g" data-y="%.9g"/>\n',
      px(xs[i]), py(ys[i]), p.x, p.y)
  end
  add('</svg>\n')
  return table.concat(out)
end

-- Writes text through a temporary file renamed into place (no partial output).
function M.write(path, text)
  return require("eapig.files").write_atomic(path, "plot", text)
end

return M
