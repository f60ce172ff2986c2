//! The few system calls the initrd needs, over libc: mounts, module loading, ioctls, power-off.

use std::ffi::CString;
use std::io;
use std::path::Path;

fn cstr(s: &str) -> io::Result<CString> {
    CString::new(s).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in a path"))
}

fn check(r: libc::c_int, what: &str) -> io::Result<()> {
    if r < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("{what}: {e}")));
    }
    Ok(())
}

pub fn mount(
    source: &str,
    target: &str,
    fstype: &str,
    flags: libc::c_ulong,
    data: &str,
) -> io::Result<()> {
    let (s, t, f, d) = (cstr(source)?, cstr(target)?, cstr(fstype)?, cstr(data)?);
    let data_ptr = if data.is_empty() {
        std::ptr::null()
    } else {
        d.as_ptr().cast()
    };
    // SAFETY: every pointer is a valid NUL-terminated string (or null for no data) living across the call.
    let r = unsafe { libc::mount(s.as_ptr(), t.as_ptr(), f.as_ptr(), flags, data_ptr) };
    check(r, &format!("mount {source} on {target} ({fstype})"))
}

pub fn move_mount(from: &str, to: &str) -> io::Result<()> {
    mount(from, to, "", libc::MS_MOVE, "")
}

/// Loads a kernel module from a file; one already loaded is fine.
pub fn load_module(path: &Path) -> io::Result<()> {
    let file = std::fs::File::open(path)?;
    let params = cstr("")?;
    use std::os::fd::AsRawFd;
    // SAFETY: finit_module with an open fd, an empty parameter string and no flags.
    let r = unsafe { libc::syscall(libc::SYS_finit_module, file.as_raw_fd(), params.as_ptr(), 0) };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EEXIST) {
            return Ok(());
        }
        return Err(io::Error::new(
            e.kind(),
            format!("loading {}: {e}", path.display()),
        ));
    }
    Ok(())
}

pub fn chroot_and_exec(init: &str) -> io::Error {
    let dot = match cstr(".") {
        Ok(c) => c,
        Err(e) => return e,
    };
    // SAFETY: chroot to the current directory, a valid C string.
    if unsafe { libc::chroot(dot.as_ptr()) } < 0 {
        return io::Error::last_os_error();
    }
    if let Err(e) = std::env::set_current_dir("/") {
        return e;
    }
    use std::os::unix::process::CommandExt;
    std::process::Command::new(init).exec()
}

/// Unmounts a file system.
pub fn umount(target: &str) -> io::Result<()> {
    let t = cstr(target)?;
    // SAFETY: a valid NUL-terminated path living across the call.
    let r = unsafe { libc::umount2(t.as_ptr(), 0) };
    check(r, &format!("umount {target}"))
}

/// Syncs and reboots: a counted boot that failed spends its try, and the boot loader picks the next entry.
pub fn reboot() -> ! {
    // SAFETY: plain system calls without pointers.
    unsafe {
        libc::sync();
        libc::reboot(libc::RB_AUTOBOOT);
    }
    loop {
        std::thread::sleep(std::time::Duration::from_secs(60));
    }
}

/// Syncs and powers the machine off: an unverified root is never booted.
pub fn power_off() -> ! {
    // SAFETY: plain system calls without pointers.
    unsafe {
        libc::sync();
        libc::reboot(libc::RB_POWER_OFF);
    }
    loop {
        std::thread::sleep(std::time::Duration::from_secs(60));
    }
}

/// An ioctl taking a pointer to a buffer.
pub fn ioctl(fd: libc::c_int, request: libc::c_ulong, buf: &mut [u8]) -> io::Result<()> {
    // SAFETY: the buffer is valid for its whole length, which the request's structure fits in.
    let r = unsafe { libc::ioctl(fd, request as _, buf.as_mut_ptr()) };
    check(r, &format!("ioctl {request:#x}"))
}
