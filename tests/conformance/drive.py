"""Drives kosoku (the Autobahn TestSuite's case files under a Rust runner)
against one WebSocket server and prints one JSON line per case, so that
tests/conformance.rs can count and name them. Installs nothing: run it with
the interpreter of the venv .ci/test makes (target/conformance-venv).

usage: drive.py URL CONCURRENCY --include GLOB... [--exclude GLOB...]
"""

import argparse
import asyncio
import json
import sys

import kosoku


async def run(args):
    try:
        return await kosoku.run_fuzzingclient(
            args.url, args.include, args.exclude, concurrency=args.concurrency
        )
    except kosoku.FailureError as failure:
        return failure.results


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("concurrency", type=int)
    parser.add_argument("--include", action="append", default=[])
    parser.add_argument("--exclude", action="append", default=[])
    args = parser.parse_args()
    for case in asyncio.run(run(args)):
        print(
            json.dumps(
                {
                    "id": case.case_id,
                    "passed": case.passed,
                    "behavior": case.behavior.value,
                    "behavior_close": case.behavior_close.value,
                    "result": case.result,
                    "result_close": case.result_close,
                    "remote_close_code": case.remote_close_code,
                    "duration_ms": case.duration,
                }
            ),
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
