"""The mount's inode table: FUSE inode numbers <-> paths in the target, as a tree of nodes.

A node stands for one name in one directory; renaming moves the node, so a directory
rename is O(1) here and every descendant's path follows. Inode numbers are never reused
within a mount. This module knows nothing of the disk, the index or pyfuse3.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

ROOT_INODE = 1  # FUSE's root, pyfuse3.ROOT_INODE


@dataclass(eq=False)
class Node:
    """One name the kernel knows (or may know) in the mount."""

    inode: int
    name: str
    parent: Node | None
    nlookup: int = 0  # the kernel's lookup count: the node lives while it is above zero
    opened: int = 0  # open file handles on it, and requests in flight that hold it
    children: dict[str, Node] = field(default_factory=dict)  # only the known ones

    @property
    def path(self) -> str:
        """The path relative to the target's directory; '' for the root.

        Raises Detached for a node that was unlinked or replaced by a rename."""
        parts: list[str] = []
        node: Node = self
        while node.inode != ROOT_INODE:
            parts.append(node.name)
            if node.parent is None:
                raise Detached(self.inode)
            node = node.parent
        return "/".join(reversed(parts))

    @property
    def detached(self) -> bool:
        """Unlinked, or replaced by a rename: it has no path any more."""
        node: Node | None = self
        while node is not None:
            if node.inode == ROOT_INODE:
                return False
            node = node.parent
        return True

    def walk(self) -> Iterator[Node]:
        """This node and every known node below it."""
        stack = [self]
        while stack:
            node = stack.pop()
            yield node
            stack.extend(node.children.values())


class Detached(LookupError):
    """The node has no path any more (unlinked, or replaced by a rename)."""


class UnknownInode(LookupError):
    """The kernel named an inode this mount never gave out (or already forgot)."""


class InodeTable:
    """Inode numbers handed to the kernel and the nodes they stand for."""

    def __init__(self) -> None:
        self.root = Node(ROOT_INODE, "", None, nlookup=1)
        self._nodes: dict[int, Node] = {ROOT_INODE: self.root}
        self._next = ROOT_INODE + 1

    def __len__(self) -> int:
        return len(self._nodes)

    def known(self, inode: int) -> bool:
        return inode in self._nodes

    def get(self, inode: int) -> Node:
        try:
            return self._nodes[inode]
        except KeyError:
            raise UnknownInode(inode) from None

    def child(self, parent: Node, name: str) -> Node:
        """The node for `name` in `parent`, made when missing (no lookup counted)."""
        node = parent.children.get(name)
        if node is None:
            node = Node(self._next, name, parent)
            self._next += 1
            parent.children[name] = node
            self._nodes[node.inode] = node
        return node

    def find(self, path: str) -> Node | None:
        """The known node at `path`, if any; never makes one."""
        node = self.root
        for part in path.split("/") if path else ():
            found = node.children.get(part)
            if found is None:
                return None
            node = found
        return node

    def remember(self, node: Node) -> None:
        """The kernel now holds one more reference (a lookup, create or readdir entry)."""
        node.nlookup += 1

    def forget(self, inode: int, count: int) -> None:
        node = self._nodes.get(inode)
        if node is None or node is self.root:
            return
        node.nlookup = max(0, node.nlookup - count)
        self._drop(node)

    def release(self, node: Node) -> None:
        """An open handle on `node` closed."""
        node.opened = max(0, node.opened - 1)
        self._drop(node)

    @contextmanager
    def held(self, *nodes: Node) -> Iterator[None]:
        """Keep `nodes` in the table across awaits, whatever the kernel forgets meanwhile."""
        for node in nodes:
            node.opened += 1
        try:
            yield
        finally:
            for node in nodes:
                self.release(node)

    def _drop(self, node: Node | None) -> None:
        """Forget nodes nothing refers to any more, climbing while parents become idle."""
        while (
            node is not None
            and node is not self.root
            and node.nlookup == 0
            and node.opened == 0
            and not node.children
        ):
            parent = node.parent
            if parent is not None and parent.children.get(node.name) is node:
                del parent.children[node.name]
            self._nodes.pop(node.inode, None)
            node.parent = None
            node = parent

    def detach(self, parent: Node, name: str) -> Node | None:
        """`name` left `parent` (unlink, rmdir, or replaced by a rename)."""
        node = parent.children.pop(name, None)
        if node is not None:
            node.parent = None
            if node.nlookup == 0 and node.opened == 0:
                self._forget_subtree(node)
        return node

    def _forget_subtree(self, node: Node) -> None:
        for below in list(node.walk()):
            if below.nlookup == 0 and below.opened == 0:
                self._nodes.pop(below.inode, None)

    def move(self, parent: Node, name: str, new_parent: Node, new_name: str) -> None:
        """Rename: the node keeps its inode; whatever held the new name is detached."""
        node = parent.children.pop(name, None)
        if new_parent.children.get(new_name) is not node:
            self.detach(new_parent, new_name)
        if node is not None:
            node.name = new_name
            node.parent = new_parent
            new_parent.children[new_name] = node
        self._drop(parent)

    def exchange(self, parent: Node, name: str, new_parent: Node, new_name: str) -> None:
        """RENAME_EXCHANGE: the two names swap their nodes."""
        first = parent.children.pop(name, None)
        second = new_parent.children.pop(new_name, None)
        if first is not None:
            first.name, first.parent = new_name, new_parent
            new_parent.children[new_name] = first
        if second is not None:
            second.name, second.parent = name, parent
            parent.children[name] = second
