# autoif verification worker: runs model-written `evaluate(response)` functions for the
# Rust supervisor in src/verify/. The supervisor has already confined this process
# (namespaces, rlimits, seccomp; see docs/verify.md); this file adds the Python-level
# layers (an import allow-list, restricted builtins, capped stdout/stderr) and keeps
# functions apart: this process is a zygote that never runs model code. For every batch
# (one function, many inputs) it forks a child that runs the function and exits, so each
# function starts from the same clean, pre-imported state; the child reports its results
# to the zygote through a pipe of its own, and only the zygote can answer the supervisor.
#
# Protocol (argv[2] is a JSON config):
#   requests  on fd cfg.req_fd: a 16-byte header (body length, decimal, newline), the JSON
#       body {"seq", "func", "inputs": [str]}, then a 32-byte nonce. The zygote forks the
#       child before it reads the nonce, so no child ever holds it.
#   responses on fd cfg.resp_fd: one JSON line {"seq", "nonce", "cpu"} per request, plus
#       "results" (a result is true (pass), false (fail) or [kind, message] (error)),
#       "died" ({"signal": n} or {"status": n}: the child died without results) or
#       "failed" ("flooded" or "malformed": the child's report was refused).
#   progress  in the shared page on fd cfg.progress_fd: (index, start_ns, seq) as three
#       little-endian i64, rewritten before every call (index -1 while loading the
#       function) so the supervisor can enforce a wall-clock deadline per call.
import ast
import builtins
import ctypes
import gc
import json
import mmap
import os
import resource
import signal
import struct
import sys
import time
import types

PROGRESS = struct.Struct("<qqq")
# One classic-BPF instruction (struct sock_filter).
SOCK_FILTER = struct.Struct("=HBBI")
REQUEST_HEADER_BYTES = 16
NONCE_BYTES = 32
# Bytes of results a child may report per input (plus a fixed allowance).
RESULT_BYTES_PER_INPUT = 4096
MESSAGE_CHARS = 300
ERROR_KINDS = frozenset({"compile", "missing_evaluate", "runtime", "timeout", "memory",
                         "forbidden", "bad_return", "crashed"})
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2
# Attribute names that lead from ordinary objects to frames, globals or getattr-by-string.
INTROSPECTION_ATTRS = frozenset({
    "gi_frame", "gi_code", "gi_yieldfrom", "cr_frame", "cr_code", "cr_await",
    "ag_frame", "ag_code", "ag_await", "f_back", "f_globals", "f_locals",
    "f_builtins", "f_code", "tb_frame", "tb_next", "get_field",
})
# `case Cls(attr=...)` patterns read attributes by name (Python 3.10+).
MATCH_CLASS = getattr(ast, "MatchClass", ())
# Public names that evaluate strings with the module's own (unrestricted) builtins.
HIDDEN_NAMES = {"typing": frozenset({"get_type_hints", "ForwardRef", "evaluate_forward_ref"})}
# Builtins that reach files, the terminal, the interpreter or code objects.
REMOVED_BUILTINS = ("open", "input", "breakpoint", "help", "exit", "quit", "compile",
                    "vars", "copyright", "credits", "license")


class Forbidden(ImportError):
    """Raised when model code tries something the Python guard refuses."""


class CallState:
    """What the current call did that must override its return value."""
    __slots__ = ("forbidden", "output_exceeded")

    def __init__(self):
        self.forbidden = None
        self.output_exceeded = False


class CappedSink:
    """Replacement for sys.stdout/sys.stderr: discards text, fails past the cap."""

    def __init__(self, state, cap):
        self.state = state
        self.cap = cap
        self.used = 0

    def write(self, text):
        self.used += len(text)
        if self.used > self.cap:
            self.state.output_exceeded = True
            raise OSError(f"output limit exceeded: more than {self.cap} characters printed")
        return len(text)

    def flush(self):
        pass

    def isatty(self):
        return False


def is_forbidden_attr(name):
    return (name.startswith("_") and name != "__name__") or name in INTROSPECTION_ATTRS


class Guard:
    """The Python-level allow-list: checked source, guarded imports and builtins."""

    def __init__(self, state, allowed):
        self.state = state
        self.allowed = frozenset(allowed)
        self.views = {}
        self.base_builtins = self._restricted_builtins()

    def refuse(self, message):
        self.state.forbidden = message
        raise Forbidden(message)

    def check_source(self, source, mode):
        tree = ast.parse(source, "<evaluate>", mode)
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute):
                names = (node.attr,)
            elif isinstance(node, ast.Name):
                names = (node.id,) if node.id.startswith("__") else ()
            elif isinstance(node, MATCH_CLASS):
                names = node.kwd_attrs
            elif isinstance(node, ast.ImportFrom) and node.level:
                self.refuse(f"relative imports are not allowed (line {node.lineno})")
            else:
                continue
            for name in names:
                if is_forbidden_attr(name):
                    self.refuse(f"access to {name!r} is not allowed (line {node.lineno})")
        return tree

    def guarded_import(self, name, globals=None, locals=None, fromlist=(), level=0):
        top = name.partition(".")[0]
        if level != 0 or top not in self.allowed:
            self.refuse(f"import of {name!r} is not allowed in the sandbox")
        module = REAL_IMPORT(name, globals, locals, fromlist, level)
        return self.view(module)

    def view(self, module):
        """A copy of a module's public names, so private helpers (`random._os`,
        `statistics.sys`) stay out of reach. Built in the zygote: each function's process
        gets its own copy of it with the fork, so patching it stays there."""
        found = self.views.get(module.__name__)
        if found is not None:
            return found
        copy = types.ModuleType(module.__name__, module.__doc__)
        self.views[module.__name__] = copy
        hidden = HIDDEN_NAMES.get(module.__name__, ())
        for key, value in list(module.__dict__.items()):
            if key.startswith("_") or key in hidden:
                continue
            if isinstance(value, types.ModuleType):
                if value.__name__.partition(".")[0] not in self.allowed:
                    continue
                value = self.view(value)
            copy.__dict__[key] = value
        return copy

    def _restricted_builtins(self):
        names = dict(vars(builtins))
        for key in [k for k in names if k.startswith("_") and k != "__build_class__"]:
            del names[key]
        for removed in REMOVED_BUILTINS:
            names[removed] = self._refuser(removed)
        guard = self

        def checked_name(name):
            if isinstance(name, str) and is_forbidden_attr(name):
                guard.refuse(f"access to {name!r} is not allowed")
            return name

        def guarded_getattr(obj, name, *default):
            return getattr(obj, checked_name(name), *default)

        def guarded_hasattr(obj, name):
            return hasattr(obj, checked_name(name))

        def guarded_setattr(obj, name, value):
            setattr(obj, checked_name(name), value)

        def guarded_delattr(obj, name):
            delattr(obj, checked_name(name))

        def run_checked(run, source, scope, local_scope, mode):
            if not isinstance(source, str):
                guard.refuse(f"{mode} of a code object is not allowed")
            guard.check_source(source, mode)
            caller = sys._getframe(2)
            if scope is None:
                scope = caller.f_globals
                if local_scope is None:
                    local_scope = caller.f_locals
            if isinstance(scope, dict):
                scope.setdefault("__builtins__", caller.f_globals.get("__builtins__"))
            return run(source, scope, local_scope)

        def guarded_eval(source, globals=None, locals=None):
            return run_checked(eval, source, globals, locals, "eval")

        def guarded_exec(source, globals=None, locals=None):
            return run_checked(exec, source, globals, locals, "exec")

        names.update(getattr=guarded_getattr, hasattr=guarded_hasattr,
                     setattr=guarded_setattr, delattr=guarded_delattr,
                     eval=guarded_eval, exec=guarded_exec,
                     __import__=self.guarded_import)
        return names

    def _refuser(self, name):
        def refuse(*args, **kwargs):
            self.refuse(f"{name}() is not available in the sandbox")
        return refuse


REAL_IMPORT = builtins.__import__


class SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


class SeccompFilter:
    """A BPF program from the supervisor, packed once in the zygote; `install` patches
    in the caller's pid where the program compares against it, then loads it."""

    def __init__(self, spec, prctl):
        self.buffer = ctypes.create_string_buffer(
            b"".join(SOCK_FILTER.pack(*insn) for insn in spec["program"]))
        self.own_pid_slots = spec["own_pid_slots"]
        self.program = SockFprog(len(spec["program"]), ctypes.addressof(self.buffer))
        self.prctl = prctl

    def install(self):
        pid = os.getpid()
        for slot in self.own_pid_slots:
            struct.pack_into("=I", self.buffer, slot * SOCK_FILTER.size + 4, pid)
        if self.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(self.program), 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "cannot install a seccomp filter")


class Worker:
    def __init__(self, cfg):
        self.state = CallState()
        self.sink = CappedSink(self.state, cfg["max_output_chars"])
        self.timeout_s = cfg["timeout_ms"] / 1000.0
        self.guarded = cfg["python_guard"]
        self.available = [m for m in cfg["allowed_modules"] if self._preimport(m)]
        self.guard = Guard(self.state, cfg["allowed_modules"]) if self.guarded else None
        if self.guard:
            for name in self.available:
                self.guard.view(sys.modules[name])
        self.req_fd = cfg["req_fd"]
        self.resp_fd = cfg["resp_fd"]
        self.progress = mmap.mmap(cfg["progress_fd"], PROGRESS.size)
        os.close(cfg["progress_fd"])
        self.mark = PROGRESS.pack_into
        self.cpu_hard = resource.getrlimit(resource.RLIMIT_CPU)[1]
        prctl = ctypes.CDLL(None, use_errno=True).prctl
        prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p, ctypes.c_ulong,
                          ctypes.c_ulong]
        filters = cfg["filters"]
        self.serving_filter = filters and SeccompFilter(filters["serving"], prctl)
        self.function_filter = filters and SeccompFilter(filters["function"], prctl)

    @staticmethod
    def _preimport(name):
        try:
            REAL_IMPORT(name)
            return True
        except Exception:
            return False

    def serve(self):
        # From here on the model's prints go to the sink and raw fds 1/2 to /dev/null.
        os.dup2(1, 2)
        sys.stdin = None
        sys.stdout = sys.stderr = self.sink
        if self.serving_filter:
            self.serving_filter.install()
        # Every later collection in a function's process skips (so does not copy) the
        # zygote's objects.
        gc.collect()
        gc.freeze()
        self.send({"ready": True, "python": sys.version.split()[0], "modules": self.available})
        while True:
            header = read_exact(self.req_fd, REQUEST_HEADER_BYTES)
            if header is None:
                return
            request = json.loads(read_exact(self.req_fd, int(header)))
            seq, count = request["seq"], len(request["inputs"])
            self.mark(self.progress, 0, -1, time.monotonic_ns(), seq)
            result_read, result_write = os.pipe()
            child = os.fork()
            if child == 0:
                os.close(result_read)
                self.run_child(result_write, request)
            os.close(result_write)
            nonce = read_exact(self.req_fd, NONCE_BYTES)
            if nonce is None:
                return
            reply = self.collect(child, result_read, count)
            reply.update(seq=seq, nonce=nonce.decode("ascii"), cpu=cpu_seconds())
            self.send(reply)

    def run_child(self, result_fd, request):
        """Runs one batch in the forked child and exits; never returns."""
        status = 1
        try:
            os.close(self.req_fd)
            os.close(self.resp_fd)
            if self.function_filter:
                self.function_filter.install()
            results = self.run_batch(request["seq"], request["func"], request["inputs"])
            write_all(result_fd, encode(results))
            os.close(result_fd)
            status = 0
        finally:
            EXIT(status)

    def collect(self, child, fd, count):
        """The child's results, checked and capped, or why there are none. The child is
        gone when this returns: with complete results it has nothing left to do and is
        killed rather than waited for."""
        cap = count * RESULT_BYTES_PER_INPUT + (1 << 20)
        chunks, size = [], 0
        while size <= cap:
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        os.close(fd)
        results = checked_results(b"".join(chunks), count) if size <= cap else None
        if results is not None:
            self.reap(child)
            return {"results": results}
        _, status = os.waitpid(child, 0)
        if size > cap:
            return {"failed": "flooded"}
        if os.WIFSIGNALED(status):
            return {"died": {"signal": os.WTERMSIG(status)}}
        if not chunks:
            return {"died": {"status": os.WEXITSTATUS(status)}}
        return {"failed": "malformed"}

    @staticmethod
    def reap(child):
        try:
            os.kill(child, signal.SIGKILL)
        except OSError:  # gone already, or outside a PID namespace (own pid only)
            pass
        try:
            os.waitpid(child, 0)
        except ChildProcessError:
            pass

    def send(self, message):
        write_all(self.resp_fd, encode(message) + b"\n")

    def run_batch(self, seq, source, inputs):
        self.limit_cpu(len(inputs))
        self.mark(self.progress, 0, -1, time.monotonic_ns(), seq)
        evaluate, failure = self.load(source)
        if failure is not None:
            return [failure] * len(inputs)
        results = []
        state, sink, mark, progress, clock = (self.state, self.sink, self.mark,
                                              self.progress, time.monotonic_ns)
        for index, response in enumerate(inputs):
            state.forbidden = None
            state.output_exceeded = False
            sink.used = 0
            mark(progress, 0, index, clock(), seq)
            try:
                value = evaluate(response)
            except BaseException as error:  # SystemExit too: the batch goes on
                result = error_result(error)
            else:
                if value is True:
                    result = True
                elif value is False:
                    result = False
                else:
                    result = ["bad_return",
                              clip(f"evaluate returned {type(value).__name__}, not bool")]
            if state.forbidden is not None:
                result = ["forbidden", clip(state.forbidden)]
            elif state.output_exceeded:
                result = ["runtime", f"output limit exceeded: more than {sink.cap} characters printed"]
            results.append(result)
        return results

    def load(self, source):
        """Compiles and runs the function source in a fresh namespace; returns
        (evaluate, None) or (None, error result for every input)."""
        state = self.state
        state.forbidden = None
        state.output_exceeded = False
        self.sink.used = 0
        try:
            parsed = self.guard.check_source(source, "exec") if self.guarded else source
            code = compile(parsed, "<evaluate>", "exec")
        except Forbidden:
            return None, ["forbidden", clip(state.forbidden)]
        except MemoryError as error:
            return None, ["memory", describe(error)]
        except Exception as error:  # SyntaxError, ValueError (NUL bytes), RecursionError
            return None, ["compile", describe(error)]
        # This process is the function's own: no copies needed.
        own_builtins = self.guard.base_builtins if self.guarded else vars(builtins)
        namespace = {"__builtins__": own_builtins, "__name__": "__evaluate__"}
        try:
            exec(code, namespace)
        except BaseException as error:
            failure = error_result(error)
            if state.forbidden is not None:
                failure = ["forbidden", clip(state.forbidden)]
            return None, failure
        if state.forbidden is not None:
            return None, ["forbidden", clip(state.forbidden)]
        evaluate = namespace.get("evaluate")
        if not callable(evaluate):
            return None, ["missing_evaluate", "the source defines no callable `evaluate`"]
        return evaluate, None

    def limit_cpu(self, calls):
        """CPU seconds for this batch: a backstop under the supervisor's wall clock."""
        budget = int(cpu_seconds() + self.timeout_s * (calls + 1)) + 2
        hard = self.cpu_hard
        soft = budget if hard == resource.RLIM_INFINITY else min(budget, hard)
        resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))


EXIT = os._exit


def read_exact(fd, size):
    """Exactly `size` bytes from fd; None at end-of-file."""
    parts = []
    while size:
        chunk = os.read(fd, size)
        if not chunk:
            return None
        parts.append(chunk)
        size -= len(chunk)
    return b"".join(parts)


def write_all(fd, data):
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def encode(message):
    # Lone surrogates from model strings become "?" instead of invalid JSON escapes.
    return json.dumps(message, ensure_ascii=False).encode("utf-8", "replace")


def checked_results(data, count):
    """A child's report as a list of `count` well-formed results, or None."""
    try:
        results = json.loads(data)
    except ValueError:
        return None
    if type(results) is not list or len(results) != count:
        return None
    for index, result in enumerate(results):
        if type(result) is bool:
            continue
        if (type(result) is not list or len(result) != 2 or type(result[0]) is not str
                or result[0] not in ERROR_KINDS or type(result[1]) is not str):
            return None
        results[index] = [result[0], clip(result[1])]
    return results


def clip(text):
    if len(text) > MESSAGE_CHARS:
        text = text[:MESSAGE_CHARS - 3] + "..."
    return text


def cpu_seconds():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def describe(error):
    name = type(error).__name__
    try:
        detail = error.msg if isinstance(error, SyntaxError) else str(error)
        text = f"{name}: {detail}" if detail else name
    except BaseException:  # a model-defined exception whose __str__ fails
        text = name
    line = error.lineno if isinstance(error, SyntaxError) else None
    tb = error.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "<evaluate>":
            line = tb.tb_lineno
        tb = tb.tb_next
    if line is not None:
        text += f" (line {line})"
    return clip(text)


def error_result(error):
    if isinstance(error, MemoryError):
        return ["memory", describe(error)]
    return ["runtime", describe(error)]


def main():
    if len(sys.argv) < 3 or sys.argv[1] != "autoif-verify-worker":
        sys.exit("usage: python3 -c WORKER autoif-verify-worker CONFIG_JSON")
    Worker(json.loads(sys.argv[2])).serve()


main()
