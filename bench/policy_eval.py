"""The cost of one policy decision, ``Policy.grant(account, scope)``, against a large policy.

    python3 bench/policy_eval.py [--evaluations 100000] [--batch 100] [--profile]

Every token request runs one ``grant`` per requested scope on the reactor thread, so its cost
bounds how many requests a single daemon can answer. The policy is generated in memory (10,000
users, 10 groups of 100 rules mixing exact names, ``team-N/*``, ``deep-N/**``, ``proj-N/*/cache``,
``${account}/**`` and ``*``) and goes through the same validating constructors a reload uses.
Timings are taken in batches with ``perf_counter_ns`` so the clock's own cost stays out of the
per-evaluation figure. A kind of evaluation slower than ``--threshold`` µs gets a profile.

Also measured: loading 100,000 users in the seed format (``{"*": ["pull"]}``), and what that
costs in resident memory.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import pstats
import random
import statistics
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import bcrypt

from tokend.policy.documents import (
    anonymous_from_document,
    groups_from_document,
    users_from_document,
)
from tokend.policy.model import Policy
from tokend.policy.report import unused_rule_warnings
from tokend.scope import ResourceScope

USERS = 10_000
GROUPS = 10
SEED_USERS = 100_000
PASS_HASH = bcrypt.hashpw(b"bench", bcrypt.gensalt(4)).decode()
"""One hash for every user: hashing 100,000 passwords would measure bcrypt, not the policy."""

PUSH = ("pull", "push")


# --- the generated policy ---------------------------------------------------------------------


def group_rules(group: int) -> dict[str, list[str]]:
    """100 rules: 40 exact, 25 one-level, 25 any-depth, 8 inner-wildcard, ${account}, and either
    ``*`` (even groups) or one more exact name, so members of odd groups only can really miss."""
    rules: dict[str, list[str]] = {}
    for i in range(40):
        rules[f"exact-{group}-{i}/app"] = ["pull", "push"]
    for i in range(25):
        rules[f"team-{group}-{i}/*"] = ["pull", "push"]
    for i in range(25):
        rules[f"deep-{group}-{i}/**"] = ["pull"]
    for i in range(8):
        rules[f"proj-{group}-{i}/*/cache"] = ["*"]
    rules["${account}/**"] = ["*"]
    if group % 2 == 0:
        rules["*"] = ["pull"]
    else:
        rules[f"exact-{group}-40/app"] = ["pull"]
    return rules


def user_name(n: int) -> str:
    return f"user-{n:05d}"


def build_documents(rng: random.Random) -> tuple[dict[str, object], dict[str, object], object]:
    groups = {f"group-{g}": {"repositories": group_rules(g)} for g in range(GROUPS)}
    users: dict[str, object] = {}
    for n in range(USERS):
        member_of = rng.sample(range(GROUPS), rng.randint(1, 3))
        own: dict[str, list[str]] = {
            f"own-{n}/app": ["pull", "push"],
            f"own-{n}/tools/*": ["pull"],
        }
        if n % 3 == 0:
            own[f"shared-{n % 50}/**"] = ["pull", "delete"]
        users[user_name(n)] = {
            "pass_hash": PASS_HASH,
            "repositories": own,
            "groups": [f"group-{g}" for g in member_of],
        }
    anonymous = {
        "blacklist": False,
        "repositories": [
            *(f"public/exact-{i}" for i in range(500)),
            *(f"pub-{i}/*" for i in range(250)),
            *(f"lib-{i}/**" for i in range(250)),
        ],
    }
    return groups, users, anonymous


def load(groups_document: object, users_document: object, anonymous_document: object) -> Policy:
    groups = groups_from_document(groups_document, "groups.json")
    users = users_from_document(users_document, "users.json", groups)
    anonymous, _ = anonymous_from_document(anonymous_document, "repositories.json")
    return Policy(users, anonymous, groups)


# --- what is asked ----------------------------------------------------------------------------

Case = tuple[str | None, ResourceScope]


def repository(name: str) -> ResourceScope:
    return ResourceScope("repository", name, PUSH)


def cases(kind: str, count: int, users: Mapping[str, object], rng: random.Random) -> list[Case]:
    """``count`` requests of one kind, each from a random user (or anonymous)."""
    made: list[Case] = []
    names = list(users)
    odd_only = [
        name
        for name in names
        if all(int(g.rsplit("-", 1)[1]) % 2 for g in users[name]["groups"])  # type: ignore[index]
    ]
    while len(made) < count:
        account = rng.choice(names)
        groups = [int(g.rsplit("-", 1)[1]) for g in users[account]["groups"]]  # type: ignore[index]
        group = rng.choice(groups)
        if kind == "exact hit":
            name = f"exact-{group}-{rng.randrange(40)}/app"
        elif kind == "pattern hit":
            name = rng.choice(
                (
                    f"team-{group}-{rng.randrange(25)}/svc-{rng.randrange(1000)}",
                    f"deep-{group}-{rng.randrange(25)}/a/b/c{rng.randrange(1000)}",
                    f"proj-{group}-{rng.randrange(8)}/x{rng.randrange(1000)}/cache",
                )
            )
        elif kind == "${account} hit":
            name = f"{account}/app/v{rng.randrange(1000)}"
        elif kind == "miss":
            account = rng.choice(odd_only)
            name = f"nowhere-{rng.randrange(10_000)}/team-{group}-1/app"
        elif kind == "anonymous":
            account = None
            name = rng.choice(
                (
                    f"public/exact-{rng.randrange(500)}",
                    f"pub-{rng.randrange(250)}/x",
                    f"lib-{rng.randrange(250)}/a/b",
                    f"private/thing-{rng.randrange(1000)}",
                )
            )
        elif kind == "unknown user":
            account = f"ghost-{rng.randrange(1000)}"
            name = "team-0-0/app"
        else:
            raise ValueError(kind)
        made.append((account, repository(name)))
    return made


KINDS = ("exact hit", "pattern hit", "${account} hit", "miss", "anonymous", "unknown user")
EXPECTED: dict[str, Callable[[tuple[str, ...]], bool]] = {
    "exact hit": lambda granted: granted == PUSH,
    "pattern hit": lambda granted: "pull" in granted,
    "${account} hit": lambda granted: granted == PUSH,
    "miss": lambda granted: granted == (),
    "anonymous": lambda granted: granted in ((), ("pull",)),
    "unknown user": lambda granted: granted == (),
}
"""What each kind must grant: a benchmark of the wrong decision measures nothing."""


# --- timing -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Timing:
    kind: str
    per_evaluation_ns: list[float]

    def row(self) -> str:
        values = sorted(self.per_evaluation_ns)

        def at(fraction: float) -> float:
            return values[min(len(values) - 1, round(fraction * (len(values) - 1)))] / 1000

        return (
            f"  {self.kind:<16} median {statistics.median(values) / 1000:6.2f} µs"
            f"   p90 {at(0.9):6.2f} µs   p99 {at(0.99):6.2f} µs   ({len(values)} batches)"
        )


def time_batches(policy: Policy, work: list[Case], batch: int) -> list[float]:
    """Nanoseconds per evaluation, one figure per batch of ``batch`` evaluations."""
    grant = policy.grant
    per_evaluation: list[float] = []
    clock = time.perf_counter_ns
    for start in range(0, len(work) - batch + 1, batch):
        chunk = work[start : start + batch]
        began = clock()
        for account, scope in chunk:
            grant(account, scope)
        per_evaluation.append((clock() - began) / batch)
    return per_evaluation


def profile(policy: Policy, work: list[Case], kind: str) -> None:
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(5):
        for account, scope in work:
            policy.grant(account, scope)
    profiler.disable()
    output = io.StringIO()
    pstats.Stats(profiler, stream=output).sort_stats("tottime").print_stats(12)
    print(f"\nprofile of {kind!r} ({5 * len(work)} evaluations):")
    print(output.getvalue().rstrip())


# --- memory -----------------------------------------------------------------------------------


def rss_kib() -> int:
    """Resident set size now (VmRSS), not the peak: the delta shows what the policy keeps."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


def seed_load() -> tuple[float, int, int]:
    """Seconds to load 100,000 seed-format users, and RSS deltas (KiB) of document and policy."""
    gc.collect()
    before = rss_kib()
    document = {
        f"seed-{n:06d}": {"pass_hash": PASS_HASH, "repositories": {"*": ["pull"]}}
        for n in range(SEED_USERS)
    }
    gc.collect()
    with_document = rss_kib()
    began = time.perf_counter()
    users = users_from_document(document, "users.json")
    anonymous, _ = anonymous_from_document({"repositories": []}, "repositories.json")
    policy = Policy(users, anonymous)
    elapsed = time.perf_counter() - began
    gc.collect()
    after = rss_kib()
    assert policy.grant("seed-000042", repository("any/thing")) == ("pull",)
    return elapsed, with_document - before, after - with_document


def gc_pause() -> tuple[float, float]:
    """The longest pause a full collection makes, now and with the live objects frozen.

    A policy is hundreds of thousands of container objects that never die until the next
    reload; every full collection on the reactor thread walks all of them.
    """
    timings = []
    for _ in range(3):
        began = time.perf_counter()
        gc.collect()
        timings.append(time.perf_counter() - began)
    gc.freeze()
    try:
        began = time.perf_counter()
        gc.collect()
        frozen = time.perf_counter() - began
    finally:
        gc.unfreeze()
    return min(timings) * 1000, frozen * 1000


# --- main -------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--evaluations", type=int, default=100_000, help="in all, over kinds")
    parser.add_argument("--batch", type=int, default=100, help="evaluations per timed batch")
    parser.add_argument("--threshold", type=float, default=20.0, help="µs; slower gets profiled")
    parser.add_argument("--profile", action="store_true", help="profile every kind")
    parser.add_argument("--seed", type=int, default=5)
    args = parser.parse_args()
    if args.batch < 1 or args.evaluations < args.batch * len(KINDS):
        parser.error("--evaluations must allow at least one --batch per kind")
    rng = random.Random(args.seed)
    total_began = time.perf_counter()

    groups_document, users_document, anonymous_document = build_documents(rng)
    rule_count = sum(len(g["repositories"]) for g in groups_document.values())  # type: ignore[attr-defined]
    gc.collect()
    rss_before = rss_kib()
    began = time.perf_counter()
    policy = load(groups_document, users_document, anonymous_document)
    load_seconds = time.perf_counter() - began
    began = time.perf_counter()
    warnings = unused_rule_warnings(policy)
    report_seconds = time.perf_counter() - began
    gc.collect()
    print(
        f"policy: {len(policy.users)} users, {len(policy.groups)} groups, {rule_count} group rules,"
        f" {len(anonymous_document['repositories'])} anonymous entries"  # type: ignore[index]
    )
    print(
        f"load (groups + users + anonymous from documents): {load_seconds * 1000:.0f} ms, "
        f"RSS +{(rss_kib() - rss_before) / 1024:.1f} MiB; "
        f"unused-rule report (every reload): {report_seconds * 1000:.1f} ms, {len(warnings)} "
        "warnings"
    )

    per_kind = args.evaluations // len(KINDS)
    work = {kind: cases(kind, per_kind, users_document, rng) for kind in KINDS}
    for kind, requests in work.items():
        wrong = [(a, s) for a, s in requests if not EXPECTED[kind](policy.grant(a, s))]
        assert not wrong, f"{kind}: unexpected grant for {wrong[0]}"
    mixed = [case for requests in work.values() for case in requests]
    rng.shuffle(mixed)

    for requests in work.values():  # warm up: first calls fill caches, allocate, etc.
        time_batches(policy, requests[: args.batch * 10], args.batch)
    print(f"grant() per evaluation, batches of {args.batch}, scope pull,push:")
    timings = [Timing(kind, time_batches(policy, work[kind], args.batch)) for kind in KINDS]
    timings.append(Timing("mixed", time_batches(policy, mixed, args.batch)))
    for timing in timings:
        print(timing.row())

    collect_ms, frozen_ms = gc_pause()
    print(
        f"full gc.collect() with this policy loaded: {collect_ms:.0f} ms "
        f"({frozen_ms:.1f} ms after gc.freeze())"
    )

    elapsed, document_kib, policy_kib = seed_load()
    print(
        f"seed format, {SEED_USERS} users ({{'*': ['pull']}}): load {elapsed * 1000:.0f} ms, "
        f"RSS +{policy_kib / 1024:.1f} MiB for the policy "
        f"(+{document_kib / 1024:.1f} MiB for the parsed document itself)"
    )

    slow = [t for t in timings if statistics.median(t.per_evaluation_ns) > args.threshold * 1000]
    for timing in timings if args.profile else slow:
        if timing.kind in work:
            profile(policy, work[timing.kind][:2000], timing.kind)
    if slow:
        print(f"slower than {args.threshold} µs: {', '.join(t.kind for t in slow)}")
    print(f"total {time.perf_counter() - total_began:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
