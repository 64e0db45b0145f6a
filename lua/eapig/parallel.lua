-- eapig.parallel: data parallelism over MPI ranks, for `mpirun -np K eapig attribute ...` (and
-- evaluate, sweep, or a Lua script run the same way).
--
-- Rank r of K runs the batches whose index i (0, 1, 2, ... in dataset order) has i % K == r; the
-- partial sums (scores, per-row metric values) are then summed over ranks with one allreduce per
-- buffer, so every rank ends with the totals. Scores agree with one process up to float32
-- rounding: the same per-batch contributions are added in another grouping. Rank 0 alone prints
-- progress and writes outputs.
--
-- MPI is optional: libeapig_mpi is built only where CMake finds MPI and loaded here when present.
-- Outside mpirun (or with one process) nothing is initialized and every batch is this process's.
local ffi = require("ffi")

local M = {}

local lib      -- libeapig_mpi's namespace, false when it was not built, nil before the first look
local world    -- { rank, size } once known

-- libeapig_mpi, loaded once, or false.
local function library()
  if lib == nil then
    local path = package.searchpath("libeapig_mpi", package.cpath)
    local ok, cdef = pcall(require, "eapig.cdef_mpi")
    if path and ok then
      ffi.cdef(cdef)
      -- global: Open MPI's components are plugins that look libmpi's symbols up in the global scope
      lib = ffi.load(path, true)
    else
      lib = false
    end
  end
  return lib
end

local function check(status, where)
  if status ~= 0 then error(where .. ": " .. ffi.string(lib.eapig_mpi_last_error()), 0) end
end

-- Processes the launcher started (Open MPI's, or a PMI launcher's), nil outside one.
local function launched_size()
  return tonumber(os.getenv("OMPI_COMM_WORLD_SIZE") or os.getenv("PMI_SIZE"))
end

-- True when eapig was built with MPI (libeapig_mpi is there).
function M.available()
  return library() ~= false
end

-- The MPI library's version line ("Open MPI v4.1.4, ..."), or nil without MPI.
function M.library_version()
  local C = library()
  if not C then return nil end
  local buf = ffi.new("char[?]", 256)
  check(C.eapig_mpi_library_version(buf, 256), "eapig_mpi_library_version")
  return ffi.string(buf)
end

-- {rank, size} of this process; initializes MPI on first use under a launcher with K > 1.
function M.world()
  if world then return world end
  local n = launched_size()
  if not n or n <= 1 then
    world = { rank = 0, size = 1 }
    return world
  end
  local C = library()
  if not C then
    error(("started by mpirun with %d processes, but this eapig was built without MPI " ..
      "(libeapig_mpi not found): install libopenmpi-dev and rebuild"):format(n), 0)
  end
  local rank, size = ffi.new("int32_t[1]"), ffi.new("int32_t[1]")
  check(C.eapig_mpi_init(rank, size), "eapig_mpi_init")
  -- a script that never calls finish() still ends MPI when its Lua state closes
  world = { rank = rank[0], size = size[0], ender = ffi.gc(ffi.new("char[1]"), function() C.eapig_mpi_finalize() end) }
  return world
end

-- Whether this process runs batch `index` (0-based, in dataset order).
function M.owns(index)
  local w = M.world()
  return index % w.size == w.rank
end

-- Whether this process prints and writes (rank 0; the only process outside mpirun).
function M.is_root()
  return M.world().rank == 0
end

local function allreduce(buf, n, dtype, op)
  if M.world().size == 1 then return buf end
  check(lib.eapig_mpi_allreduce(buf, n, lib[dtype], lib[op]), "eapig_mpi_allreduce")
  return buf
end

-- In place: float buffer (n) summed over ranks.
function M.sum_floats(buf, n)
  return allreduce(buf, n, "EAPIG_MPI_FLOAT", "EAPIG_MPI_SUM")
end

-- In place: double buffer (n) summed over ranks.
function M.sum_doubles(buf, n)
  return allreduce(buf, n, "EAPIG_MPI_DOUBLE", "EAPIG_MPI_SUM")
end

-- The largest of a number over ranks.
function M.max(x)
  if M.world().size == 1 then return x end
  local buf = ffi.new("double[1]", x)
  allreduce(buf, 1, "EAPIG_MPI_DOUBLE", "EAPIG_MPI_MAX")
  return buf[0]
end

-- Ends MPI when it was started: normally when ok, else aborting every rank (exit code 1) so that
-- the others do not wait forever for the one that failed.
function M.finish(ok)
  if not (world and world.size > 1) then return end
  if ok then
    ffi.gc(world.ender, nil)
    check(lib.eapig_mpi_finalize(), "eapig_mpi_finalize")
  else
    io.stderr:flush()
    lib.eapig_mpi_abort(1)
  end
end

return M
