#!/usr/bin/env python3
"""Precision and recall of code-review-graph's CALLS edges on codegraph's labelled corpus.

Usage: crg_accuracy.py CORPUS_DIR CODE_REVIEW_GRAPH_BINARY

For each language directory (with expected.txt) the corpus is copied to a scratch git
repository, built with `code-review-graph build`, and its SQLite graph is read. Two readings:
  direct  - only edges whose target names an indexed definition (target_resolution 'direct'
            or a qualified target);
  by-name - also unresolved bare-name targets, matched to every definition of that name (how
            its callers/impact queries use them).
"""
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile


def expected(path):
    pairs = set()
    for line in open(path):
        line = line.strip()
        if line and not line.startswith("#"):
            a, b = line.split(" -> ")
            pairs.add((a.strip(), b.strip()))
    return pairs


def score(found, want):
    tp = len(found & want)
    p = tp / len(found) if found else 0.0
    r = tp / len(want) if want else 0.0
    return p, r, tp, len(found), len(want)


def main():
    corpus, crg = sys.argv[1], sys.argv[2]
    print("| language | reading | precision | recall |")
    print("|---|---|---:|---:|")
    for lang in sorted(os.listdir(corpus)):
        src = os.path.join(corpus, lang)
        if not os.path.exists(os.path.join(src, "expected.txt")):
            continue
        want = expected(os.path.join(src, "expected.txt"))
        with tempfile.TemporaryDirectory() as tmp:
            repo = os.path.join(tmp, lang)
            shutil.copytree(src, repo)
            env = dict(os.environ, GIT_AUTHOR_NAME="b", GIT_AUTHOR_EMAIL="b@localhost", GIT_COMMITTER_NAME="b", GIT_COMMITTER_EMAIL="b@localhost")
            for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "corpus"]):
                subprocess.run(cmd, cwd=repo, check=True, env=env)
            subprocess.run([crg, "build", "-q", "--repo", "."], cwd=repo, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            db = sqlite3.connect(os.path.join(repo, ".code-review-graph", "graph.db"))
            prefix = repo + "/"
            defs = [q for (q,) in db.execute("select qualified_name from nodes where kind != 'File'")]
            rel = lambda q: q[len(prefix):] if q.startswith(prefix) else q
            direct, by_name = set(), set()
            for src_q, dst_q in db.execute("select source_qualified, target_qualified from edges where kind = 'CALLS'"):
                caller = rel(src_q)
                if "::" in dst_q:
                    direct.add((caller, rel(dst_q)))
                    by_name.add((caller, rel(dst_q)))
                else:
                    for d in defs:
                        if d.endswith("::" + dst_q) or d.endswith("." + dst_q):
                            by_name.add((caller, rel(d)))
            for name, found in (("direct", direct), ("by-name", by_name)):
                p, r, tp, nf, nw = score(found, want)
                print(f"| {lang} | {name} | {p:.3f} ({tp}/{nf}) | {r:.3f} ({tp}/{nw}) |")


if __name__ == "__main__":
    main()
