-- Fuzz smoke run (tests/fuzz/README.md): builds the libFuzzer harnesses with clang and runs each
-- for a bounded time (EAPIG_FUZZ_SECONDS, default 30) over a scratch copy of its committed seed
-- corpus; then the Lua mutation harness, against the sanitizer build when there is one. Any crash,
-- leak, hang or runtime error fails. Plain pass only: skipped under EAPIG_SANITIZED=1 (the
-- harnesses carry their own sanitizers), and skipped with a message without clang's libFuzzer.
-- The longer campaign is `bash scripts/fuzz.sh [SECONDS]`.
local SECONDS = tonumber(os.getenv("EAPIG_FUZZ_SECONDS")) or 30
local HARNESSES = { "file_tensor", "tokenizer_bin", "tokenizer_model", "gpt2_pairs", "gguf" }
local BUILD = "build-fuzz"

local sh = require("support.shell").run

local function have_libfuzzer()
  local _, rc = sh("command -v clang >/dev/null && test -n \"$(clang -print-file-name=libclang_rt.fuzzer-x86_64.a " ..
    "| grep /)\" && test -f \"$(clang -print-file-name=libclang_rt.fuzzer-x86_64.a)\"")
  return rc == 0
end

describe("fuzzing (smoke run)", function()
  if os.getenv("EAPIG_SANITIZED") == "1" then
    pending("skipped in the sanitizer pass: the harnesses build their own sanitizers")
    return
  end
  if not have_libfuzzer() then
    pending("skipped: clang or libclang-rt-14-dev (libFuzzer) is not installed (scripts/deps.sh installs them)")
    return
  end

  local built, build_log
  setup(function()
    build_log, built = sh(("cmake -S . -B %s -DCMAKE_BUILD_TYPE=Release -DCMAKE_C_COMPILER=clang -DEAPIG_FUZZ=ON " ..
      ">/dev/null && cmake --build %s -j2 --target fuzz_%s"):format(BUILD, BUILD, table.concat(HARNESSES, " fuzz_")))
  end)

  for _, h in ipairs(HARNESSES) do
    it(("fuzz_%s runs %d s on its seed corpus without a crash, leak or hang"):format(h, SECONDS), function()
      assert.are.equal(0, built, build_log)
      local work = os.tmpname()
      os.remove(work)
      os.execute("mkdir -p '" .. work .. "'")
      local out, rc = sh(("%s/fuzz_%s -max_total_time=%d -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 " ..
        "-artifact_prefix=%s/ %s tests/fuzz/corpus/%s"):format(BUILD, h, SECONDS, work, work, h))
      os.execute("rm -rf '" .. work .. "'")
      assert.are.equal(0, rc, out:sub(-4000))
      assert.is_nil(out:find("ERROR: ", 1, true), out:sub(-4000))
      local runs = tonumber(out:match("stat::number_of_executed_units: (%d+)"))
      local cov = out:match("DONE%s+cov: (%d+)")
      assert.truthy(runs and runs > 0, out:sub(-2000))
      print(("\nfuzz_%s: %d executions, cov %s edges in %d s"):format(h, runs, tostring(cov), SECONDS))
    end)
  end

  it(("the Lua mutation harness runs %d s over every Lua-side parser without a runtime error"):format(SECONDS),
    function()
      -- against the AddressSanitizer build when scripts/test.sh has made one from this tree (its
      -- generated cdef is this build's), else against this build
      local plain = os.getenv("EAPIG_BUILD_DIR") or "build"
      local function slurp(path)
        local f = io.open(path, "rb")
        if not f then return nil end
        local text = f:read("*a")
        f:close()
        return text
      end
      local sanitized = slurp("build-sanitize/libeapig.so") and slurp("build-sanitize/eapig/cdef.lua")
      local env = "EAPIG_BUILD_DIR=" .. plain
      if sanitized and sanitized == slurp(plain .. "/eapig/cdef.lua") then
        env = "LD_PRELOAD=\"$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libubsan.so)\" " ..
          "ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 " ..
          "EAPIG_BUILD_DIR=build-sanitize"
      end
      local per_target = math.max(1, math.floor(SECONDS / 8))
      local out, rc = sh(("%s luajit tests/fuzz/lua_mutate.lua --seconds %d"):format(env, per_target))
      assert.are.equal(0, rc, out)
      print("\n" .. out)
    end)
end)
