"""USER resolution against /etc/passwd and /etc/group, with Docker's rules."""

import pytest

from builder.errors import SolveError
from builder.executor import UserNotFound
from builder.executor.users import ExecUser, parse_group, parse_passwd, resolve_user
from tests.support.rootfs import GROUP, PASSWD


def test_empty_user_is_root_with_its_home():
    assert resolve_user("", PASSWD, GROUP) == ExecUser(uid=0, gid=0, groups=(), home="/root")


def test_root_without_passwd_file():
    assert resolve_user("", None, None) == ExecUser(0, 0, (), "/root")
    assert resolve_user("root", None, None) == ExecUser(0, 0, (), "/root")


def test_name_gets_primary_and_supplementary_groups():
    user = resolve_user("app", PASSWD, GROUP)
    assert (user.uid, user.gid, user.home) == (1000, 1000, "/home/app")
    assert user.groups == (100,)  # only "users", which lists app: runc's setgroups, as BuildKit measured


def test_numeric_uid_found_in_passwd_uses_its_entry():
    assert resolve_user("1000", PASSWD, GROUP) == resolve_user("app", PASSWD, GROUP)


def test_numeric_uid_missing_from_passwd_gets_gid_0_and_root_dir_home():
    assert resolve_user("4242", PASSWD, GROUP) == ExecUser(4242, 0, (), "/")


def test_explicit_group_by_name_or_number_drops_supplementary_groups():
    assert resolve_user("app:users", PASSWD, GROUP) == ExecUser(1000, 100, (), "/home/app")
    assert resolve_user("1000:4242", PASSWD, GROUP) == ExecUser(1000, 4242, (), "/home/app")
    assert resolve_user("nobody:nogroup", PASSWD, GROUP).gid == 65534


def test_unknown_user_name_is_an_actionable_error():
    with pytest.raises(UserNotFound, match="unable to find user ghost: no matching entries in passwd file"):
        resolve_user("ghost", PASSWD, GROUP)
    assert issubclass(UserNotFound, SolveError)


def test_unknown_group_name_is_an_error():
    with pytest.raises(UserNotFound, match="unable to find group ghosts: no matching entries in group file"):
        resolve_user("app:ghosts", PASSWD, GROUP)


def test_name_without_passwd_file_is_an_error():
    with pytest.raises(UserNotFound, match="unable to find user app"):
        resolve_user("app", None, None)


def test_malformed_and_comment_lines_are_skipped():
    passwd = "# comment\nbroken\nbad:x:notanumber:0::/:/bin/sh\nok:x:5:6::/srv:/bin/sh\n"
    assert [e.name for e in parse_passwd(passwd)] == ["ok"]
    assert [(g.name, g.members) for g in parse_group("g:x:7:a,b\nnogid:x:\n")] == [("g", ("a", "b"))]


def test_empty_home_falls_back_to_root_dir():
    assert resolve_user("svc", "svc:x:9:9::\n", "").home == "/"
