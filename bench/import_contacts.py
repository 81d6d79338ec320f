"""Contact import speed against the speed of the phone parser itself.

Generates N contacts (default 200,000; 30% with two or more phones) as a CSV, then measures,
in the same run:
  1. raw: `phonenumbers.parse` + `format_number(E164)` over every number in the file;
  2. import: `paceline contacts import` of the same file into a fresh SQLite database.
It prints both rates and their ratio. Goal: import >= 50% of the raw parse rate, i.e. the
parser, not Paceline's pipeline, is the limit.

    python bench/import_contacts.py [--contacts N] [--workers W] [--seed S]
"""

from __future__ import annotations

import argparse
import csv
import random
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import phonenumbers
from phonenumbers import PhoneNumberFormat

from dialer.campaigns import create_campaign
from dialer.db import open_database
from dialer.importer import import_contacts

# Real US area codes across the four mainland zones, Alaska and Hawaii.
AREA_CODES = [
    "212",
    "646",
    "718",
    "617",
    "305",
    "404",
    "202",
    "215",  # Eastern
    "312",
    "713",
    "214",
    "612",
    "314",
    "512",  # Central
    "303",
    "602",
    "801",
    "505",  # Mountain
    "415",
    "213",
    "206",
    "503",
    "702",
    "619",  # Pacific
    "907",
    "808",
]
FORMATS = ["({a}) {e}-{s}", "{a}-{e}-{s}", "+1 {a} {e} {s}", "{a}{e}{s}", "1{a}{e}{s}"]
FIRST = ["Ana", "Ben", "Chloé", "Dev", "Eva", "Femi", "Gus", "Hana", "Ivo", "Jun"]
LAST = ["Silva", "Okafor", "Müller", "Tanaka", "Smith", "Kowalski", "Nguyen", "Haddad"]


def random_number(rng: random.Random) -> str:
    while True:
        a = rng.choice(AREA_CODES)
        e = f"{rng.randint(2, 9)}{rng.randint(0, 9)}{rng.randint(0, 9)}"
        s = f"{rng.randint(0, 9999):04d}"
        raw = rng.choice(FORMATS).format(a=a, e=e, s=s)
        if e[1:] != "11" and phonenumbers.is_valid_number(phonenumbers.parse(raw, "US")):
            return raw


def generate(path: Path, n: int, seed: int) -> list[str]:
    """Write the CSV; return every number in it (for the raw baseline)."""
    rng = random.Random(seed)
    numbers: list[str] = []
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["CustomerNo", "Mobile", "Home", "Work", "Name", "Surname", "Plan", "Balance"])
        for i in range(n):
            k = 1 if rng.random() >= 0.30 else rng.choice((2, 2, 2, 3))
            phones = [random_number(rng) for _ in range(k)] + [""] * (3 - k)
            numbers.extend(phones[:k])
            w.writerow(
                [
                    f"C{i:08d}",
                    *phones,
                    rng.choice(FIRST),
                    rng.choice(LAST),
                    rng.choice(("gold", "silver", "basic")),
                    f"{rng.uniform(0, 900):.2f}",
                ]
            )
    return numbers


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--contacts", type=int, default=200_000)
    ap.add_argument(
        "--workers",
        type=int,
        default=None,
        help="validation processes (default: the importer's own choice)",
    )
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument(
        "--skip-single",
        action="store_true",
        help="skip the single-process import shown for comparison",
    )
    args = ap.parse_args(argv)
    now = datetime.now(UTC)
    with tempfile.TemporaryDirectory() as tmp:
        csv_path = Path(tmp) / "contacts.csv"
        t0 = time.perf_counter()
        numbers = generate(csv_path, args.contacts, args.seed)
        print(
            f"generated {args.contacts:,} contacts with {len(numbers):,} numbers "
            f"({csv_path.stat().st_size / 1e6:.1f} MB) in {time.perf_counter() - t0:.1f} s"
        )

        t0 = time.perf_counter()
        for raw in numbers:
            phonenumbers.format_number(phonenumbers.parse(raw, "US"), PhoneNumberFormat.E164)
        raw_s = time.perf_counter() - t0
        raw_rate = args.contacts / raw_s
        print(
            f"raw phonenumbers.parse+format: {len(numbers) / raw_s:,.0f} numbers/s "
            f"= {raw_rate:,.0f} contacts/s (single process)"
        )

        runs = [("default", args.workers)]
        if not args.skip_single:
            runs.append(("single process", 0))
        for label, workers in runs:
            engine = open_database(f"sqlite:///{Path(tmp) / f'bench-{workers}.db'}")
            cid = create_campaign(engine, "bench", now)
            t0 = time.perf_counter()
            result = import_contacts(
                engine,
                cid,
                csv_path,
                now,
                mapping="external_id=CustomerNo,phone1=Mobile,phone2=Home,phone3=Work,"
                "param1=Name,param2=Surname,param3=Plan,param4=Balance",
                workers=workers,
            )
            imp_s = time.perf_counter() - t0
            engine.dispose()
            rate = result.inserted / imp_s
            used = (
                f"{workers} validation workers"
                if workers is not None
                else "the importer's choice of workers"
            )
            print(
                f"import into SQLite ({label}: {used}): {result.inserted:,} contacts in "
                f"{imp_s:.2f} s = {rate:,.0f} contacts/s, {rate / raw_rate:.2f} of the raw "
                f"parse rate" + (" (goal >= 0.50)" if label == "default" else "")
            )
            if result.inserted != args.contacts:
                print(
                    f"ERROR: expected {args.contacts} contacts, imported {result.inserted}",
                    file=sys.stderr,
                )
                return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
