"""Resolve a Dockerfile ``USER`` value against a container's /etc/passwd and /etc/group.

The rules are Docker's (runc's ``GetExecUser``):

- ``""`` means root; ``user`` is a name, or a uid when it is all digits;
- ``user:group``: group is a name or a gid; a numeric gid need not exist in /etc/group;
- a uid missing from passwd is still allowed, with gid 0 and HOME ``/``;
- a name missing from passwd (or a group name missing from group) is an error;
- without an explicit group, the supplementary groups are those that list the user by name.

The primary gid is put first in the supplementary list, as login and containerd do.
Parsing is pure string work so that the executor can run it in a freshly forked child.
"""

from __future__ import annotations


from builder.errors import SolveError
from builder.plumbing.records import dataclass


class UserNotFound(SolveError):
    """USER names a user or group the image does not define."""


@dataclass(frozen=True)
class ExecUser:
    uid: int
    gid: int
    groups: tuple[int, ...]   # supplementary groups for setgroups(): the memberships /etc/group lists
    home: str


@dataclass(frozen=True)
class PasswdEntry:
    name: str
    uid: int
    gid: int
    home: str


@dataclass(frozen=True)
class GroupEntry:
    name: str
    gid: int
    members: tuple[str, ...]


def parse_passwd(text: str) -> list[PasswdEntry]:
    entries = []
    for line in text.splitlines():
        fields = line.split(":")
        if len(fields) < 4 or line.startswith("#"):
            continue
        try:
            uid, gid = int(fields[2]), int(fields[3])
        except ValueError:
            continue
        home = fields[5] if len(fields) > 5 else ""
        entries.append(PasswdEntry(fields[0], uid, gid, home))
    return entries


def parse_group(text: str) -> list[GroupEntry]:
    entries = []
    for line in text.splitlines():
        fields = line.split(":")
        if len(fields) < 3 or line.startswith("#"):
            continue
        try:
            gid = int(fields[2])
        except ValueError:
            continue
        members = tuple(m for m in fields[3].split(",") if m) if len(fields) > 3 else ()
        entries.append(GroupEntry(fields[0], gid, members))
    return entries


def resolve_user(spec: str, passwd: str | None, group: str | None) -> ExecUser:
    """Turn SPEC ("", "name", "uid", "name:group", "uid:gid", ...) into ids, groups and HOME.

    PASSWD and GROUP are the files' contents, or None when the image lacks them.
    """
    user_part, _, group_part = spec.partition(":")
    user_part = user_part or "0"
    users = parse_passwd(passwd or "")

    if user_part.isdigit():
        match = next((u for u in users if u.uid == int(user_part)), None)
    else:
        match = next((u for u in users if u.name == user_part), None)
        if match is None and user_part == "root":
            match = PasswdEntry("root", 0, 0, "/root")
    if match is None and not user_part.isdigit():
        raise UserNotFound(f"unable to find user {user_part}: no matching entries in passwd file")

    if match is not None:
        uid, gid, home = match.uid, match.gid, match.home or "/"
    else:
        uid, gid, home = int(user_part), 0, "/"
    if uid == 0 and match is None:
        home = "/root"

    groups = parse_group(group or "")
    supplementary: tuple[int, ...] = ()
    if group_part:
        if group_part.isdigit():
            gid = int(group_part)
        else:
            found = next((g for g in groups if g.name == group_part), None)
            if found is None:
                raise UserNotFound(
                    f"unable to find group {group_part}: no matching entries in group file")
            gid = found.gid
    elif match is not None:
        supplementary = tuple(g.gid for g in groups if match.name in g.members)

    # As BuildKit's runc: the supplementary groups are only those /etc/group lists the user in.
    return ExecUser(uid=uid, gid=gid, groups=tuple(dict.fromkeys(supplementary)), home=home)
