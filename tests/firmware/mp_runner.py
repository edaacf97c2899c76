# Runs firmware test modules under MicroPython (or CPython): every callable named test_*
# in each module named on the command line. One line per test, machine-readable:
#   TENDRIL-TEST {"module": ..., "test": ..., "ok": true|false, "error": ...}
# then TENDRIL-SUMMARY {"passed": n, "failed": m}. Exit status 1 if anything failed.

import json
import sys

PREFIX = "TENDRIL-TEST "


def _describe(exc):
    try:
        import io

        buf = io.StringIO()
        sys.print_exception(exc, buf)  # MicroPython
        return buf.getvalue()
    except AttributeError:
        import traceback

        return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))


def _report(module, test, ok, error):
    print(PREFIX + json.dumps({"module": module, "test": test, "ok": ok, "error": error}))


def run(module_names):
    passed = failed = 0
    for name in module_names:
        try:
            module = __import__(name)
        except Exception as exc:
            _report(name, "<import>", False, _describe(exc))
            failed += 1
            continue
        for attr in sorted(dir(module)):
            fn = getattr(module, attr)
            if not attr.startswith("test_") or not callable(fn):
                continue
            try:
                fn()
            except Exception as exc:
                _report(name, attr, False, _describe(exc))
                failed += 1
            else:
                _report(name, attr, True, "")
                passed += 1
    print("TENDRIL-SUMMARY " + json.dumps({"passed": passed, "failed": failed}))
    return failed


if __name__ == "__main__":
    sys.exit(1 if run(sys.argv[1:]) else 0)
