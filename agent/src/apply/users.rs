//! Users, groups and SSH `authorized_keys`, made by editing `/etc/passwd`, `/etc/group`, `/etc/shadow` and
//! `/etc/gshadow` directly (never `useradd`: the target may be a root folder, not the running system).
//!
//! Every line the step does not own is kept byte for byte and in order; new entries are appended. All checks
//! are made before anything is written, so a refused run writes nothing. The files are written in the order
//! passwd, group, shadow, gshadow, then homes and keys, and a user found in passwd has its missing pieces
//! (private group, shadow and gshadow entries, home, keys) completed: a run after a crash mid-way finishes
//! the job, and a second run with the same users changes nothing.

use std::fs;

use cairn_profile::User;
use cairn_profile::system::user_name_ok;

use super::StepError;
use crate::target::{Owner, Target};

const PASSWD: &str = "/etc/passwd";
const GROUP: &str = "/etc/group";
const SHADOW: &str = "/etc/shadow";
const GSHADOW: &str = "/etc/gshadow";

/// Ids given to new users and their groups: `[FIRST_ID, LAST_ID)`, as Debian's adduser does.
const FIRST_ID: u32 = 1000;
const LAST_ID: u32 = 60000;

/// Homes that are not directories to make or own (Debian's `nobody` has `/nonexistent`).
const NO_HOME: &[&str] = &["", "/", "/nonexistent"];

/// Makes the users, their groups, homes and `authorized_keys`; returns whether anything changed.
pub fn apply(target: &Target, users: &[User]) -> Result<bool, StepError> {
    if users.is_empty() {
        return Ok(false);
    }
    let mut passwd = Db::load(target, PASSWD, true)?;
    let mut group = Db::load(target, GROUP, true)?;
    let mut shadow = Db::load(target, SHADOW, false)?;
    let mut gshadow = Db::load(target, GSHADOW, false)?;
    let shell = if target.exists("/bin/bash") {
        "/bin/bash"
    } else {
        "/bin/sh"
    };

    let mut accounts = Vec::with_capacity(users.len());
    for user in users {
        let name = user.name.as_str();
        if !user_name_ok(name) {
            return Err(StepError::refused(format!(
                "user {name:?}: not a valid user name"
            )));
        }
        let account = match passwd.find(name) {
            Some(i) => existing_account(&passwd, i, name)?,
            None => {
                for (db, what) in [
                    (&group, "a group named"),
                    (&shadow, "an entry for"),
                    (&gshadow, "an entry for"),
                ] {
                    if db.find(name).is_some() {
                        return Err(StepError::refused(format!(
                            "user {name}: {} already has {what} \"{name}\" but {PASSWD} has no such user: \
                             refusing to take it over",
                            db.path
                        )));
                    }
                }
                let uid = lowest_free(&passwd, 2).ok_or_else(|| {
                    StepError::refused(format!("user {name}: no free uid in {FIRST_ID}..{LAST_ID}"))
                })?;
                let gid = if group.ids(2).contains(&uid) {
                    lowest_free(&group, 2).ok_or_else(|| {
                        StepError::refused(format!(
                            "user {name}: no free gid in {FIRST_ID}..{LAST_ID}"
                        ))
                    })?
                } else {
                    uid
                };
                let home = format!("/home/{name}");
                passwd.push(format!("{name}:x:{uid}:{gid}::{home}:{shell}"));
                Account { uid, gid, home }
            }
        };

        // The user's private group: made with a new user, or completed after a crash that wrote passwd only.
        let private_group = group.find(name);
        if private_group.is_none() && !group.ids(2).contains(&account.gid) {
            group.push(format!("{name}:x:{}:", account.gid));
        }
        if group
            .find(name)
            .is_some_and(|i| group.id(i, 2) == Some(account.gid))
            && gshadow.find(name).is_none()
        {
            gshadow.push(format!("{name}:!::"));
        }
        if shadow.find(name).is_none() {
            shadow.push(format!("{name}:!:::::::"));
        }

        for g in &user.groups {
            let Some(i) = group.find(g) else {
                return Err(StepError::refused(format!(
                    "user {name}: group \"{g}\" does not exist in {GROUP}"
                )));
            };
            group.add_member(i, name);
            // A group without a gshadow line is left so: membership is read from /etc/group.
            if let Some(i) = gshadow.find(g) {
                gshadow.add_member(i, name);
            }
        }

        if NO_HOME.contains(&account.home.as_str()) && !user.ssh_keys.is_empty() {
            return Err(StepError::refused(format!(
                "user {name}: home is {:?} in {PASSWD}: nowhere to put SSH keys",
                account.home
            )));
        }
        accounts.push(account);
    }

    let shadow_gid = group
        .find("shadow")
        .and_then(|i| group.id(i, 2))
        .unwrap_or(0);
    let shadow_owner = Owner {
        mode: 0o640,
        uid: 0,
        gid: shadow_gid,
    };
    let mut changed = false;
    // passwd first: a crash after it leaves users that the next run completes (see above).
    changed |= passwd.save(target, Owner::ROOT_0644)?;
    changed |= group.save(target, Owner::ROOT_0644)?;
    changed |= shadow.save(target, shadow_owner)?;
    changed |= gshadow.save(target, shadow_owner)?;

    for (user, account) in users.iter().zip(&accounts) {
        changed |= home_and_keys(target, user, account)?;
    }
    Ok(changed)
}

struct Account {
    uid: u32,
    gid: u32,
    home: String,
}

fn existing_account(passwd: &Db, i: usize, name: &str) -> Result<Account, StepError> {
    let malformed = |what: &str| {
        StepError::refused(format!(
            "user {name}: {PASSWD} entry has a malformed {what}"
        ))
    };
    let uid = passwd.id(i, 2).ok_or_else(|| malformed("uid"))?;
    let gid = passwd.id(i, 3).ok_or_else(|| malformed("gid"))?;
    let home = passwd.field(i, 5).ok_or_else(|| malformed("home"))?;
    let home = String::from_utf8(home.to_vec()).map_err(|_| malformed("home"))?;
    // The home is made and chowned: it must name one place, not climb out of it.
    if !(home.is_empty() || home.starts_with('/')) || home.split('/').any(|c| c == "." || c == "..")
    {
        return Err(malformed("home"));
    }
    Ok(Account { uid, gid, home })
}

/// The lowest id in `[FIRST_ID, LAST_ID)` not used in field `n` of `db`.
fn lowest_free(db: &Db, n: usize) -> Option<u32> {
    let used = db.ids(n);
    (FIRST_ID..LAST_ID).find(|id| !used.contains(id))
}

fn home_and_keys(target: &Target, user: &User, account: &Account) -> Result<bool, StepError> {
    let name = &user.name;
    let home = account.home.trim_end_matches('/');
    if NO_HOME.contains(&account.home.as_str()) {
        return Ok(false);
    }
    let owner = |mode| Owner {
        mode,
        uid: account.uid,
        gid: account.gid,
    };
    let mut changed = false;
    // A home that exists elsewhere than /home (root's /root, a system user's) keeps its owner and mode.
    if !target.exists(home) || home.starts_with("/home/") {
        changed |= target.ensure_dir(home, owner(0o700))?;
    }
    if user.ssh_keys.is_empty() {
        return Ok(changed);
    }
    let ssh = format!("{home}/.ssh");
    let keys_file = format!("{ssh}/authorized_keys");
    // Both live in a directory the user owns: never follow a link the user may have planted.
    for path in [&ssh, &keys_file] {
        let host = target.resolve(path, false)?;
        if fs::symlink_metadata(&host).is_ok_and(|m| m.file_type().is_symlink()) {
            return Err(StepError::refused(format!(
                "user {name}: {path} is a symbolic link: refusing to follow it"
            )));
        }
    }
    changed |= target.ensure_dir(&ssh, owner(0o700))?;
    let mut content = String::new();
    for key in &user.ssh_keys {
        content.push_str(key);
        content.push('\n');
    }
    changed |= target.write(&keys_file, content.as_bytes(), owner(0o600))?;
    Ok(changed)
}

/// One of the colon-separated files, as lines of bytes (a GECOS field need not be UTF-8).
struct Db {
    path: &'static str,
    lines: Vec<Vec<u8>>,
    /// Whether the content ends with a newline (an empty or missing file counts as one).
    trailing_newline: bool,
    /// The content as read; None when the file is missing.
    original: Option<Vec<u8>>,
}

impl Db {
    fn load(target: &Target, path: &'static str, required: bool) -> Result<Db, StepError> {
        let original = target.read(path)?;
        if original.is_none() && required {
            return Err(StepError::refused(format!(
                "{path} is missing: the target is not a Linux root"
            )));
        }
        let bytes = original.as_deref().unwrap_or_default();
        let mut lines: Vec<Vec<u8>> = bytes.split(|&b| b == b'\n').map(<[u8]>::to_vec).collect();
        let trailing_newline = bytes.is_empty() || bytes.ends_with(b"\n");
        // split gives one empty piece after a final newline (or for empty content).
        if trailing_newline {
            lines.pop();
        }
        Ok(Db {
            path,
            lines,
            trailing_newline,
            original,
        })
    }

    fn find(&self, name: &str) -> Option<usize> {
        self.lines
            .iter()
            .position(|l| l.split(|&b| b == b':').next() == Some(name.as_bytes()))
    }

    fn field(&self, i: usize, n: usize) -> Option<&[u8]> {
        self.lines.get(i)?.split(|&b| b == b':').nth(n)
    }

    fn id(&self, i: usize, n: usize) -> Option<u32> {
        std::str::from_utf8(self.field(i, n)?).ok()?.parse().ok()
    }

    /// Every id in field `n`; lines that are not entries (comments, blanks) have none.
    fn ids(&self, n: usize) -> Vec<u32> {
        (0..self.lines.len())
            .filter_map(|i| self.id(i, n))
            .collect()
    }

    fn push(&mut self, line: String) {
        self.lines.push(line.into_bytes());
        self.trailing_newline = true;
    }

    /// Adds `name` to the comma-separated member list, the 4th field of group and gshadow, if not there.
    fn add_member(&mut self, i: usize, name: &str) {
        let Some(line) = self.lines.get(i) else {
            return;
        };
        let mut fields: Vec<Vec<u8>> = line.split(|&b| b == b':').map(<[u8]>::to_vec).collect();
        if fields.len() < 4 {
            fields.resize(4, Vec::new());
        }
        let members = &mut fields[3];
        if members.split(|&b| b == b',').any(|m| m == name.as_bytes()) {
            return;
        }
        if !members.is_empty() {
            members.push(b',');
        }
        members.extend_from_slice(name.as_bytes());
        self.lines[i] = fields.join(&b':');
    }

    fn bytes(&self) -> Vec<u8> {
        let mut out = self.lines.join(&b'\n');
        if self.trailing_newline && !self.lines.is_empty() {
            out.push(b'\n');
        }
        out
    }

    /// Writes the file if its content differs from what was read (or it was missing); a file left as it was
    /// keeps its owner and mode.
    fn save(&self, target: &Target, owner: Owner) -> Result<bool, StepError> {
        let bytes = self.bytes();
        if self.original.as_deref() == Some(bytes.as_slice()) {
            return Ok(false);
        }
        Ok(target.write(self.path, &bytes, owner)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    use std::path::Path;

    const PASSWD_BASE: &str = "root:x:0:0:root:/root:/bin/bash\n\
        daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n\
        # a comment, kept\n\
        nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n";
    const GROUP_BASE: &str =
        "root:x:0:\nshadow:x:42:\nsudo:x:27:alice\nusers:x:100:\nnogroup:x:65534:\n";
    const SHADOW_BASE: &str =
        "root:*:19000:0:99999:7:::\ndaemon:*:19000:0:99999:7:::\nnobody:*:19000:0:99999:7:::\n";
    const GSHADOW_BASE: &str = "root:*::\nshadow:*::\nsudo:*::alice\nusers:*::\nnogroup:*::\n";
    const KEY1: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOps1 ops@laptop";
    const KEY2: &str = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAAB ops@desk";

    fn user(name: &str, groups: &[&str], keys: &[&str]) -> User {
        User {
            name: name.into(),
            groups: groups.iter().map(|s| s.to_string()).collect(),
            ssh_keys: keys.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// A small root: /etc with the four files, /bin/bash, /root, and /home a symlink to /var/home.
    fn root() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        make_root(dir.path());
        dir
    }

    fn make_root(p: &Path) {
        for d in ["etc", "usr/bin", "root", "var/home"] {
            fs::create_dir_all(p.join(d)).unwrap();
        }
        std::os::unix::fs::symlink("usr/bin", p.join("bin")).unwrap();
        fs::write(p.join("usr/bin/bash"), "").unwrap();
        std::os::unix::fs::symlink("/var/home", p.join("home")).unwrap();
        put(p, "etc/passwd", PASSWD_BASE, 0o644, 0);
        put(p, "etc/group", GROUP_BASE, 0o644, 0);
        put(p, "etc/shadow", SHADOW_BASE, 0o640, 42);
        put(p, "etc/gshadow", GSHADOW_BASE, 0o640, 42);
        fs::set_permissions(p.join("root"), fs::Permissions::from_mode(0o700)).unwrap();
    }

    fn put(root: &Path, rel: &str, content: &str, mode: u32, gid: u32) {
        let path = root.join(rel);
        fs::write(&path, content).unwrap();
        std::os::unix::fs::chown(&path, Some(0), Some(gid)).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
    }

    fn text(root: &Path, rel: &str) -> String {
        fs::read_to_string(root.join(rel)).unwrap()
    }

    /// (mode, uid, gid) of a path, not following a last symlink.
    fn meta(path: &Path) -> (u32, u32, u32) {
        let m = fs::symlink_metadata(path).unwrap();
        (m.mode() & 0o7777, m.uid(), m.gid())
    }

    /// Relative path, (mode, uid, gid), and content (a file's bytes, a link's target).
    type Entry = (String, (u32, u32, u32), Vec<u8>);

    /// Every entry under the root.
    fn snapshot(root: &Path) -> Vec<Entry> {
        let mut out = Vec::new();
        let mut todo = vec![root.to_path_buf()];
        while let Some(dir) = todo.pop() {
            for e in fs::read_dir(&dir).unwrap() {
                let path = e.unwrap().path();
                let m = fs::symlink_metadata(&path).unwrap();
                let content = if m.is_file() {
                    fs::read(&path).unwrap()
                } else if m.file_type().is_symlink() {
                    fs::read_link(&path)
                        .unwrap()
                        .into_os_string()
                        .into_encoded_bytes()
                } else {
                    if m.is_dir() {
                        todo.push(path.clone());
                    }
                    Vec::new()
                };
                let rel = path
                    .strip_prefix(root)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                out.push((rel, meta(&path), content));
            }
        }
        out.sort();
        out
    }

    #[test]
    fn new_user_with_groups_and_keys() {
        let dir = root();
        let p = dir.path();
        let t = Target::root_dir(p);
        assert!(apply(&t, &[user("ops", &["sudo", "users"], &[KEY1, KEY2])]).unwrap());

        assert_eq!(
            text(p, "etc/passwd"),
            format!("{PASSWD_BASE}ops:x:1000:1000::/home/ops:/bin/bash\n")
        );
        assert_eq!(
            text(p, "etc/group"),
            "root:x:0:\nshadow:x:42:\nsudo:x:27:alice,ops\nusers:x:100:ops\nnogroup:x:65534:\nops:x:1000:\n"
        );
        assert_eq!(
            text(p, "etc/shadow"),
            format!("{SHADOW_BASE}ops:!:::::::\n")
        );
        assert_eq!(
            text(p, "etc/gshadow"),
            "root:*::\nshadow:*::\nsudo:*::alice,ops\nusers:*::ops\nnogroup:*::\nops:!::\n"
        );
        assert_eq!(meta(&p.join("etc/passwd")), (0o644, 0, 0));
        assert_eq!(meta(&p.join("etc/group")), (0o644, 0, 0));
        assert_eq!(meta(&p.join("etc/shadow")), (0o640, 0, 42));
        assert_eq!(meta(&p.join("etc/gshadow")), (0o640, 0, 42));

        let home = p.join("var/home/ops");
        assert_eq!(meta(&home), (0o700, 1000, 1000));
        assert_eq!(meta(&home.join(".ssh")), (0o700, 1000, 1000));
        assert_eq!(
            meta(&home.join(".ssh/authorized_keys")),
            (0o600, 1000, 1000)
        );
        assert_eq!(
            text(&home, ".ssh/authorized_keys"),
            format!("{KEY1}\n{KEY2}\n")
        );
    }

    #[test]
    fn ids_skip_taken_numbers_and_shell_falls_back_to_sh() {
        let dir = root();
        let p = dir.path();
        fs::remove_file(p.join("usr/bin/bash")).unwrap();
        // uid 1000 taken in passwd; gid 1001 taken by a group.
        put(
            p,
            "etc/passwd",
            &format!("{PASSWD_BASE}alice:x:1000:1000::/home/alice:/bin/sh\n"),
            0o644,
            0,
        );
        put(
            p,
            "etc/group",
            &format!("{GROUP_BASE}alice:x:1000:\nextra:x:1001:\n"),
            0o644,
            0,
        );
        let t = Target::root_dir(p);
        assert!(apply(&t, &[user("ops", &[], &[]), user("dev", &[], &[])]).unwrap());
        let passwd = text(p, "etc/passwd");
        assert!(
            passwd.ends_with(
                "ops:x:1001:1002::/home/ops:/bin/sh\ndev:x:1002:1003::/home/dev:/bin/sh\n"
            ),
            "{passwd}"
        );
        let group = text(p, "etc/group");
        assert!(
            group.ends_with("extra:x:1001:\nops:x:1002:\ndev:x:1003:\n"),
            "{group}"
        );
        assert_eq!(meta(&p.join("var/home/dev")), (0o700, 1002, 1003));
        assert!(!p.join("var/home/ops/.ssh").exists(), "no keys, no .ssh");
    }

    #[test]
    fn existing_root_gets_keys() {
        let dir = root();
        let p = dir.path();
        let t = Target::root_dir(p);
        let before = ["etc/passwd", "etc/group", "etc/shadow", "etc/gshadow"].map(|f| text(p, f));
        assert!(apply(&t, &[user("root", &[], &[KEY1])]).unwrap());
        assert_eq!(
            ["etc/passwd", "etc/group", "etc/shadow", "etc/gshadow"].map(|f| text(p, f)),
            before
        );
        assert_eq!(meta(&p.join("root")), (0o700, 0, 0));
        assert_eq!(meta(&p.join("root/.ssh")), (0o700, 0, 0));
        assert_eq!(meta(&p.join("root/.ssh/authorized_keys")), (0o600, 0, 0));
        assert_eq!(text(p, "root/.ssh/authorized_keys"), format!("{KEY1}\n"));
        assert!(!apply(&t, &[user("root", &[], &[KEY1])]).unwrap());
    }

    #[test]
    fn empty_keys_leave_authorized_keys_alone() {
        let dir = root();
        let p = dir.path();
        fs::create_dir(p.join("root/.ssh")).unwrap();
        fs::write(
            p.join("root/.ssh/authorized_keys"),
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOld old\n",
        )
        .unwrap();
        let before = snapshot(p);
        assert!(!apply(&Target::root_dir(p), &[user("root", &[], &[])]).unwrap());
        assert_eq!(snapshot(p), before);
    }

    #[test]
    fn missing_group_is_an_error_and_writes_nothing() {
        let dir = root();
        let p = dir.path();
        let before = snapshot(p);
        let e = apply(
            &Target::root_dir(p),
            &[user("ops", &["sudo", "wheel"], &[KEY1])],
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "user ops: group \"wheel\" does not exist in /etc/group"
        );
        assert_eq!(snapshot(p), before);
    }

    #[test]
    fn a_group_named_like_a_new_user_is_refused() {
        let dir = root();
        let p = dir.path();
        put(
            p,
            "etc/group",
            &format!("{GROUP_BASE}ops:x:2000:\n"),
            0o644,
            0,
        );
        let before = snapshot(p);
        let e = apply(&Target::root_dir(p), &[user("ops", &[], &[])])
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("user ops: /etc/group already has a group named \"ops\""),
            "{e}"
        );
        assert_eq!(snapshot(p), before);
    }

    #[test]
    fn a_home_that_climbs_out_is_refused() {
        let dir = root();
        let p = dir.path();
        put(
            p,
            "etc/passwd",
            &format!("{PASSWD_BASE}ops:x:1000:1000::/home/../etc:/bin/sh\n"),
            0o644,
            0,
        );
        let before = snapshot(p);
        let e = apply(&Target::root_dir(p), &[user("ops", &[], &[KEY1])]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "user ops: /etc/passwd entry has a malformed home"
        );
        assert_eq!(snapshot(p), before);
    }

    #[test]
    fn missing_passwd_is_an_error_and_missing_shadow_files_are_made() {
        let dir = root();
        let p = dir.path();
        fs::remove_file(p.join("etc/shadow")).unwrap();
        fs::remove_file(p.join("etc/gshadow")).unwrap();
        let t = Target::root_dir(p);
        assert!(apply(&t, &[user("ops", &["sudo"], &[])]).unwrap());
        assert_eq!(text(p, "etc/shadow"), "ops:!:::::::\n");
        // sudo has no gshadow line: it is not made up; membership is in /etc/group.
        assert_eq!(text(p, "etc/gshadow"), "ops:!::\n");
        assert_eq!(meta(&p.join("etc/shadow")), (0o640, 0, 42));
        assert_eq!(meta(&p.join("etc/gshadow")), (0o640, 0, 42));

        fs::remove_file(p.join("etc/passwd")).unwrap();
        let e = apply(&t, &[user("ops", &[], &[])]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "/etc/passwd is missing: the target is not a Linux root"
        );
    }

    #[test]
    fn home_symlink_lands_inside_the_root() {
        // The root sits in a folder with a decoy var/home beside it: a link resolved against the wrong base
        // would land there, or in the host's /var/home.
        let outer = tempfile::tempdir().unwrap();
        fs::create_dir_all(outer.path().join("var/home")).unwrap();
        let p = outer.path().join("root");
        make_root(&p);
        let host_before = [
            Path::new("/var/home/ops").exists(),
            Path::new("/home/ops").exists(),
        ];
        let t = Target::root_dir(&p);
        assert!(apply(&t, &[user("ops", &[], &[KEY1])]).unwrap());
        assert_eq!(meta(&p.join("var/home/ops")), (0o700, 1000, 1000));
        assert_eq!(meta(&p.join("var/home/ops/.ssh")), (0o700, 1000, 1000));
        assert_eq!(
            text(&p, "var/home/ops/.ssh/authorized_keys"),
            format!("{KEY1}\n")
        );
        assert_eq!(
            fs::read_link(p.join("home")).unwrap(),
            Path::new("/var/home"),
            "the link is kept"
        );
        assert_eq!(
            fs::read_dir(outer.path().join("var/home")).unwrap().count(),
            0,
            "decoy untouched"
        );
        assert_eq!(
            [
                Path::new("/var/home/ops").exists(),
                Path::new("/home/ops").exists()
            ],
            host_before
        );
    }

    #[test]
    fn a_planted_ssh_symlink_is_refused() {
        let dir = root();
        let p = dir.path();
        let t = Target::root_dir(p);
        apply(&t, &[user("ops", &[], &[])]).unwrap();
        std::os::unix::fs::symlink("/etc", p.join("var/home/ops/.ssh")).unwrap();
        let e = apply(&t, &[user("ops", &[], &[KEY1])])
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "user ops: /home/ops/.ssh is a symbolic link: refusing to follow it"
        );
        assert_eq!(meta(&p.join("etc")).1, 0);
        assert!(!p.join("etc/authorized_keys").exists());
    }

    #[test]
    fn second_run_changes_nothing() {
        let dir = root();
        let p = dir.path();
        let t = Target::root_dir(p);
        let users = [
            user("ops", &["sudo"], &[KEY1]),
            user("dev", &["users", "sudo"], &[KEY2]),
            user("root", &[], &[KEY1]),
        ];
        assert!(apply(&t, &users).unwrap());
        let first = snapshot(p);
        assert!(!apply(&t, &users).unwrap());
        assert_eq!(snapshot(p), first);
    }

    #[test]
    fn a_run_after_a_crash_completes_what_is_missing() {
        // A first run wrote passwd, then crashed: no group, shadow, gshadow, home.
        let dir = root();
        let p = dir.path();
        let passwd = format!("{PASSWD_BASE}ops:x:1000:1000::/home/ops:/bin/bash\n");
        put(p, "etc/passwd", &passwd, 0o644, 0);
        let t = Target::root_dir(p);
        assert!(apply(&t, &[user("ops", &["sudo"], &[KEY1])]).unwrap());
        assert_eq!(text(p, "etc/passwd"), passwd);
        assert!(
            text(p, "etc/group")
                .ends_with("sudo:x:27:alice,ops\nusers:x:100:\nnogroup:x:65534:\nops:x:1000:\n")
        );
        assert_eq!(
            text(p, "etc/shadow"),
            format!("{SHADOW_BASE}ops:!:::::::\n")
        );
        assert!(
            text(p, "etc/gshadow")
                .ends_with("sudo:*::alice,ops\nusers:*::\nnogroup:*::\nops:!::\n")
        );
        assert_eq!(
            meta(&p.join("var/home/ops/.ssh/authorized_keys")),
            (0o600, 1000, 1000)
        );

        // The same state as one clean run.
        let clean = root();
        assert!(
            apply(
                &Target::root_dir(clean.path()),
                &[user("ops", &["sudo"], &[KEY1])]
            )
            .unwrap()
        );
        assert_eq!(snapshot(p), snapshot(clean.path()));

        // Crashed after group too: shadow and gshadow still missing the user.
        let dir = root();
        let p = dir.path();
        put(p, "etc/passwd", &passwd, 0o644, 0);
        put(p, "etc/group", &text(clean.path(), "etc/group"), 0o644, 0);
        assert!(apply(&Target::root_dir(p), &[user("ops", &["sudo"], &[KEY1])]).unwrap());
        assert_eq!(snapshot(p), snapshot(clean.path()));
    }

    #[test]
    fn lines_are_kept_byte_for_byte() {
        let dir = root();
        let p = dir.path();
        // No final newline, a blank line, a non-UTF-8 GECOS field.
        let mut passwd =
            b"root:x:0:0:r\xe9mi:/root:/bin/bash\n\nbin:x:2:2::/bin:/usr/sbin/nologin".to_vec();
        fs::write(p.join("etc/passwd"), &passwd).unwrap();
        assert!(apply(&Target::root_dir(p), &[user("ops", &[], &[])]).unwrap());
        passwd.extend_from_slice(b"\nops:x:1000:1000::/home/ops:/bin/bash\n");
        assert_eq!(fs::read(p.join("etc/passwd")).unwrap(), passwd);
    }

    /// Against a real Debian root: `CAIRN_NODE_BASE_ROOT` names an unpacked node base (it is copied first).
    #[test]
    fn debian_root() {
        let Some(base) = std::env::var_os("CAIRN_NODE_BASE_ROOT") else {
            eprintln!("debian_root: skipped, CAIRN_NODE_BASE_ROOT is not set");
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("root");
        let status = std::process::Command::new("cp")
            .arg("-a")
            .arg(Path::new(&base).join("."))
            .arg(&p)
            .status()
            .unwrap();
        assert!(status.success(), "cp -a {base:?}");
        let t = Target::root_dir(&p);
        let before = ["etc/passwd", "etc/group", "etc/shadow", "etc/gshadow"].map(|f| text(&p, f));
        let users = [user("ops", &["sudo"], &[KEY1])];
        assert!(apply(&t, &users).unwrap());

        let passwd = text(&p, "etc/passwd");
        assert!(passwd.starts_with(&before[0]), "existing lines kept");
        let added = &passwd[before[0].len()..];
        let uid: u32 = added.split(':').nth(2).unwrap().parse().unwrap();
        assert!((1000..60000).contains(&uid));
        let shell = if t.exists("/bin/bash") {
            "/bin/bash"
        } else {
            "/bin/sh"
        };
        assert_eq!(added, format!("ops:x:{uid}:{uid}::/home/ops:{shell}\n"));
        let group = text(&p, "etc/group");
        assert!(group.ends_with(&format!("ops:x:{uid}:\n")), "{group}");
        let sudo = group.lines().find(|l| l.starts_with("sudo:")).unwrap();
        assert!(
            sudo.split(':')
                .nth(3)
                .unwrap()
                .split(',')
                .any(|m| m == "ops"),
            "{sudo}"
        );
        assert_eq!(
            text(&p, "etc/shadow"),
            format!("{}ops:!:::::::\n", before[2])
        );
        let gshadow = text(&p, "etc/gshadow");
        assert!(gshadow.ends_with("ops:!::\n"));
        let sudo = gshadow.lines().find(|l| l.starts_with("sudo:")).unwrap();
        assert!(sudo.ends_with("ops"), "{sudo}");
        let shadow_gid = group
            .lines()
            .find(|l| l.starts_with("shadow:"))
            .map(|l| l.split(':').nth(2).unwrap().parse().unwrap());
        assert_eq!(
            meta(&p.join("etc/shadow")),
            (0o640, 0, shadow_gid.unwrap_or(0))
        );
        let home = t.resolve("/home/ops", true).unwrap();
        assert!(home.starts_with(&p));
        assert_eq!(meta(&home), (0o700, uid, uid));
        assert_eq!(
            fs::read_to_string(home.join(".ssh/authorized_keys")).unwrap(),
            format!("{KEY1}\n")
        );

        // What the step may touch (the whole tree takes seconds to walk).
        let touched = || (snapshot(&p.join("etc")), snapshot(&home));
        let first = touched();
        assert!(!apply(&t, &users).unwrap());
        assert_eq!(touched(), first);
    }
}
