"""Batches of token sequences as prefix trees, and pooling of their states (numpy only).

A causal text encoder's state at a position depends only on the tokens before it, so
sequences that start alike share the states of their common start: "hatsune miku" and
"hatsune miku (cosplay)" need "hatsune" and "miku" once. A batch is therefore a tree with one
node per distinct prefix; both encoders (torch and numpy) run its nodes and pool each
sequence's path. On the Danbooru tags that is 511k positions instead of 775k.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from tagsmith.errors import UsageError

POOLS = ("mean", "last", "none")


@dataclass
class PrefixTree:
    """A batch of sequences as a prefix tree: one node per distinct prefix.

    Nodes are ordered by depth (1 = first token); nodes of depth d are
    ``starts[d-1]:starts[d]`` and ``ancestors[d-1]`` is their (n_d, d) paths, root first,
    the node itself last. ``order`` lists the batch's sequence indices; ``leaves`` and
    ``lengths`` give, per sequence in that order, its last node and its length.
    """

    order: list[int]
    tokens: np.ndarray
    depths: np.ndarray
    starts: list[int]
    ancestors: list[np.ndarray]
    leaves: np.ndarray
    lengths: np.ndarray

    @property
    def max_depth(self) -> int:
        return len(self.ancestors)

    def contexts(self, p: int) -> list[tuple[int, int, np.ndarray]]:
        """Per depth d: (start, stop, (rows, p + d) indices) of what each node attends to,
        in a table of the ``p`` prefix positions followed by the tree's nodes: the prefix,
        then the node's path (itself last). That is its whole causal context in SD."""
        out = []
        for start, stop, anc in zip(self.starts[:-1], self.starts[1:], self.ancestors):
            prefix = np.broadcast_to(np.arange(p, dtype=np.int64), (len(anc), p))
            out.append((start, stop, np.concatenate([prefix, anc + p], axis=1)))
        return out

    def bucketed_contexts(self, p: int) -> list[tuple[int, int, np.ndarray, np.ndarray | None]]:
        """``contexts`` packed into power-of-two depth buckets (1, 2, 3-4, 5-8, ...: at most 7
        for 77 positions): (start, stop, (rows, span) indices, (rows, span) mask or None),
        each context padded with index 0 to its bucket's deepest node and masked there, so
        one masked attention per bucket computes what one attention per depth does."""
        contexts = self.contexts(p)
        out = []
        d = 0
        while d < len(contexts):
            top = min(len(contexts), 1 << d.bit_length())  # depths d+1 .. top
            group = contexts[d:top]
            start, stop, span = group[0][0], group[-1][1], group[-1][2].shape[1]
            idx = np.zeros((stop - start, span), dtype=np.int64)
            mask = np.zeros((stop - start, span), dtype=bool)
            for g_start, g_stop, ctx in group:
                rows = slice(g_start - start, g_stop - start)
                idx[rows, : ctx.shape[1]] = ctx
                mask[rows, : ctx.shape[1]] = True
            out.append((start, stop, idx, None if mask.all() else mask))
            d = top
        return out

    def path_sums(self) -> tuple[np.ndarray, np.ndarray]:
        """(owner, node): sequence row ``owner[i]`` (in ``order``) has node ``node[i]`` on its
        path; summing states over these pairs gives each sequence's sum over its positions."""
        owners, nodes = [], []
        by_length = np.argsort(self.lengths, kind="stable")
        cuts = np.flatnonzero(np.diff(self.lengths[by_length])) + 1
        for rows in np.split(by_length, cuts):
            d = int(self.lengths[rows[0]])
            owners.append(np.repeat(rows, d))
            nodes.append(self.ancestors[d - 1][self.leaves[rows] - self.starts[d - 1]].reshape(-1))
        return np.concatenate(owners), np.concatenate(nodes)

    def path(self, row: int) -> np.ndarray:
        """Node indices of sequence ``order[row]``, first token first."""
        depth = int(self.lengths[row])
        return self.ancestors[depth - 1][int(self.leaves[row]) - self.starts[depth - 1]]


def prefix_trees(sequences: Sequence[Sequence[int]], budget: int) -> Iterator[PrefixTree]:
    """Sequences in sorted order, cut into prefix trees of at most ``budget`` nodes (one
    sequence at least). Sorted neighbours share the longest prefixes, so a batch of
    consecutive sequences shares almost everything the whole set would."""
    keys = [tuple(s) for s in sequences]
    if any(not k for k in keys):
        raise ValueError("cannot encode an empty sequence")
    order = sorted(range(len(keys)), key=keys.__getitem__)
    batch: list[int] = []
    tokens: list[int] = []
    depths: list[int] = []
    parents: list[int] = []
    leaves: list[int] = []
    path: list[int] = []
    prev: tuple[int, ...] = ()
    for i in order:
        seq = keys[i]
        common = 0
        limit = min(len(seq), len(prev))
        while common < limit and seq[common] == prev[common]:
            common += 1
        if batch and len(tokens) + len(seq) - common > budget:
            yield _tree(batch, tokens, depths, parents, leaves)
            batch, tokens, depths, parents, leaves = [], [], [], [], []
            common = 0
        del path[common:]
        for j in range(common, len(seq)):
            parents.append(path[-1] if path else -1)
            path.append(len(tokens))
            tokens.append(seq[j])
            depths.append(j + 1)
        del path[len(seq):]
        batch.append(i)
        leaves.append(path[-1])
        prev = seq
    if batch:
        yield _tree(batch, tokens, depths, parents, leaves)


def _tree(
    order: list[int], tokens: list[int], depths: list[int], parents: list[int], leaves: list[int]
) -> PrefixTree:
    depth = np.asarray(depths, dtype=np.int64)
    by_depth = np.argsort(depth, kind="stable")
    new_index = np.empty_like(by_depth)
    new_index[by_depth] = np.arange(len(by_depth))
    parent = np.asarray(parents, dtype=np.int64)[by_depth]
    depth = depth[by_depth]
    max_depth = int(depth[-1])
    starts = np.searchsorted(depth, np.arange(1, max_depth + 2)).tolist()
    ancestors: list[np.ndarray] = []
    for d in range(1, max_depth + 1):
        own = np.arange(starts[d - 1], starts[d], dtype=np.int64)[:, None]
        if d == 1:
            ancestors.append(own)
        else:
            up = new_index[parent[starts[d - 1]:starts[d]]] - starts[d - 2]
            ancestors.append(np.concatenate([ancestors[-1][up], own], axis=1))
    leaf = new_index[np.asarray(leaves, dtype=np.int64)]
    return PrefixTree(
        order=order,
        tokens=np.asarray(tokens, dtype=np.int64)[by_depth],
        depths=depth,
        starts=starts,
        ancestors=ancestors,
        leaves=leaf,
        lengths=depth[leaf],
    )


def pool_tree(states: np.ndarray, tree: PrefixTree, pool: str) -> np.ndarray | list[np.ndarray]:
    """Per sequence of ``tree`` (in ``tree.order``), from the (N, H) node ``states``:
    "mean" over its positions, its "last" position, or "none" (its (len, H) states)."""
    if pool == "mean":
        # running sums down the tree: a node's sum is its parent's plus its own state
        sums = states.astype(np.float32, copy=True)
        for d in range(2, tree.max_depth + 1):
            start, stop = tree.starts[d - 1], tree.starts[d]
            sums[start:stop] += sums[tree.ancestors[d - 1][:, -2]]
        return sums[tree.leaves] / tree.lengths[:, None].astype(np.float32)
    if pool == "last":
        return states[tree.leaves]
    return [states[tree.path(r)] for r in range(len(tree.order))]


def encode_trees(
    sequences: Sequence[Sequence[int]],
    run: Callable[[PrefixTree], np.ndarray] | None,
    *,
    budget: int,
    pool: str,
    prefix_length: int,
    max_positions: int,
) -> Iterator[Any]:
    """The batching both encoders share: ``sequences`` as prefix trees of at most ``budget``
    nodes, each run by ``run`` (tree -> (N, H) float32 node states after a prefix of
    ``prefix_length`` positions) and pooled; yields (indices, results) per tree. With
    ``run=None`` it yields the checked trees themselves (an encoder that pools on its
    device runs them)."""
    if pool not in POOLS:
        raise ValueError(f"unknown pool {pool!r}")
    for tree in prefix_trees(sequences, budget):
        if prefix_length + tree.max_depth > max_positions:
            raise UsageError(
                f"A sequence of {prefix_length + tree.max_depth} positions does not fit the "
                f"text encoder's {max_positions}."
            )
        yield tree if run is None else (tree.order, pool_tree(run(tree), tree, pool))
