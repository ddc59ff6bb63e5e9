"""The worker: the code that runs in the sandbox's child processes (docs/sandbox.md). Standard library only.

The evaluator (``phi_assets.sandbox.handle``) starts each worker as ``python -I -B worker/__main__.py
--sandbox-worker FD`` with a fixed, scrubbed environment; ``__main__`` loads this directory as a package
of its own, so nothing of the project or of a third party is imported in the child (a test checks these
modules' imports). What is expensive is done once per worker, what must not outlive a program is done
again for each program:

- the launcher (the worker's first process, ``serve``) enters new mount, network, PID, IPC and UTS
  namespaces: as root directly, otherwise inside a new user namespace that maps the caller's uid to 0
  (``unshare -rn``, done with ``libc.unshare``), and forks the worker, PID 1 of the new PID namespace;
- the worker makes the whole file tree read-only, hides /root, /home and /run (re-exposing Python's own
  directories read-only, ``mounts``), brings up a private loopback and waits for programs on a socket;
- per program, the worker forks a supervisor (``supervisor``) into a fresh PID namespace; the supervisor,
  PID 1 there, enters fresh mount and IPC namespaces, mounts private size-limited tmpfs on /tmp, /var/tmp,
  /dev/shm (binding back, read-only, Python's directories in them: a project or venv under /tmp keeps
  working), a /proc of its own and a tmpfs on the working directory, forks the program and reports how
  it ended through a pipe only the supervisor holds; when it exits, the kernel kills every process left
  in its PID namespace, and its mounts, files and System V objects go with their namespaces;
- the program process (``program``) gives up its privileges (as root: uid 65534, no groups; otherwise:
  every capability), enters a user namespace of its own (so RLIMIT_NPROC counts its own processes only),
  sets the resource limits and executes ``exec(compile(code, "<program>", "exec"), {"__name__":
  "__main__"})``. An uncaught exception is reported (type, message, errno, failing assert line) on a
  pipe to the supervisor and the exit status is 1; the verdict comes from the exit status or signal plus
  that report, never from what the program prints.

Where the launcher cannot create the namespaces, the worker runs the programs without them only if the
evaluator's configuration allows it (``allow_unisolated``: ``PHI_SANDBOX_ALLOW_UNISOLATED``, read by the
evaluator); otherwise the program process confines itself and reports what holds but never runs the code,
and the supervisor reports the refusal (``refused``: the reason), which the evaluator raises.

Modules (each imports only the standard library and the ones above it): ``protocol`` (what the evaluator
and the worker share), ``kernel`` (ctypes on libc), ``mounts`` (the file tree), ``program``,
``supervisor``, ``serve`` (launcher and worker loop), ``__main__`` (the entry point).
"""
