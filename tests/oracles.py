"""Brute-force supports written independently of rgbench: they fix the sample encodings.

Each ``support_<name>(n, **args)`` returns the set of every X as nested tuples, in the
encoding of the class's ``sample`` (see each class docstring).
"""

from __future__ import annotations

from itertools import combinations, permutations, product


def support_topk(n, k):
    return {tuple(c) for c in combinations(range(n), k)}


def support_permutation(n):
    return set(permutations(range(n)))


def support_matching(n):
    # x[row] = column matched to row
    return set(permutations(range(n)))


def _connected(n, edges):
    seen, stack = {0}, [0]
    adjacent = {v: set() for v in range(n)}
    for u, v in edges:
        adjacent[u].add(v)
        adjacent[v].add(u)
    while stack:
        for w in adjacent[stack.pop()] - seen:
            seen.add(w)
            stack.append(w)
    return len(seen) == n


def support_kruskal(n):
    # x: the n-1 edges (u, v) with u < v, sorted
    all_edges = list(combinations(range(n), 2))
    return {tuple(t) for t in combinations(all_edges, n - 1) if _connected(n, t)}


def support_cle(n, root=0):
    # x[v] = parent of v, -1 at the root
    trees = set()
    others = [v for v in range(n) if v != root]
    for parents in product(range(n), repeat=len(others)):
        parent = dict(zip(others, parents))
        if any(parent[v] == v for v in others):
            continue
        ok = True
        for v in others:  # every node must reach the root without repeating
            seen, w = set(), v
            while w != root and ok:
                if w in seen:
                    ok = False
                seen.add(w)
                w = parent[w]
        if ok:
            trees.add(tuple(-1 if v == root else parent[v] for v in range(n)))
    return trees


def support_binary_tree(n):
    # x[v] = parent of node v in the binary tree whose in-order is 0..n-1, -1 at the root
    def trees(lo, hi, parent):
        if lo >= hi:
            yield {}
            return
        for r in range(lo, hi):
            for left in trees(lo, r, r):
                for right in trees(r + 1, hi, r):
                    yield {r: parent, **left, **right}

    return {tuple(t[v] for v in range(n)) for t in trees(0, n, -1)}


def catalan(n):
    c = 1
    for i in range(n):
        c = c * 2 * (2 * i + 1) // (i + 2)
    return c
