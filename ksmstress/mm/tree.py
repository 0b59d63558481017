"""The stable and unstable trees: binary search trees keyed by page contents, over arena tables.

Simplified: an rbtree without rebalancing. Search order, insertion points and erase semantics are the rbtree's;
only the balance (and so the depth) differs, which changes no KSM decision. Every hop dereferences the node
through the arena, so a node freed while still linked is a use-after-free report.
"""

from __future__ import annotations

from .state import K, RmapItems, StableNodes


class Tree:
    """An rb_root in cell `root_cell` of the ksm globals, over the rb_node columns of its node table."""

    def __init__(self, k: K, table: RmapItems | StableNodes, root_cell: int) -> None:
        self.k = k
        self.t = table
        self.cell = root_cell
        self.left = table.left
        self.right = table.right
        self.parent = table.parent

    @property
    def root(self) -> int:
        return int(self.k.g[self.cell])

    def reset(self) -> None:
        """root = RB_ROOT: forget the tree without touching its nodes (the unstable tree each full scan)."""
        self.k.g[self.cell] = 0

    def _s(self, ref: int) -> int:
        return self.t.deref(ref, f"{self.t.name} tree")

    def child(self, ref: int, go_left: bool) -> int:
        s = self._s(ref)
        return self.left[s] if go_left else self.right[s]

    def link(self, parent: int, go_left: bool, node: int) -> None:
        """rb_link_node + rb_insert_color: hang `node` below `parent` (0: as the root)."""
        s = self._s(node)
        self.left[s] = self.right[s] = 0
        self.parent[s] = parent
        if not parent:
            self.k.g[self.cell] = node
        elif go_left:
            self.left[self._s(parent)] = node
        else:
            self.right[self._s(parent)] = node

    def _transplant(self, u: int, v: int) -> None:
        p = self.parent[self._s(u)]
        if not p:
            self.k.g[self.cell] = v
        elif self.left[self._s(p)] == u:
            self.left[self._s(p)] = v
        else:
            self.right[self._s(p)] = v
        if v:
            self.parent[self._s(v)] = p

    def erase(self, z: int) -> None:
        """rb_erase."""
        zs = self._s(z)
        zl, zr = self.left[zs], self.right[zs]
        if not zl:
            self._transplant(z, zr)
        elif not zr:
            self._transplant(z, zl)
        else:
            y = zr
            while self.left[self._s(y)]:
                y = self.left[self._s(y)]
            ys = self._s(y)
            if self.parent[ys] != z:
                self._transplant(y, self.right[ys])
                self.right[ys] = zr
                self.parent[self._s(zr)] = y
            self._transplant(z, y)
            self.left[ys] = zl
            self.parent[self._s(zl)] = y
        self.left[zs] = self.right[zs] = self.parent[zs] = 0

    def nodes(self) -> list[int]:
        """Every node, in order (for checks and the final prune)."""
        out: list[int] = []
        stack, cur = [], self.root
        while stack or cur:
            while cur:
                stack.append(cur)
                cur = self.left[self._s(cur)]
            cur = stack.pop()
            out.append(cur)
            cur = self.right[self._s(cur)]
        return out
