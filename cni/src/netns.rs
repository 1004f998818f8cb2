//! Network namespaces: open one by path, enter it for a scope, write a sysctl inside it.
//!
//! A network namespace is a property of a *thread*, not of the process: `setns(2)` moves only
//! the calling thread. Code that holds a [`NetnsGuard`] must therefore stay on one thread until
//! it drops it: across an `.await` that means a current-thread tokio runtime (what the plugin
//! uses, `#[tokio::main(flavor = "current_thread")]`); on a multi-thread runtime the task could
//! resume on another worker, in another namespace. [`NetnsGuard`] is `!Send`, so a future that
//! holds one cannot be given to `tokio::spawn` by mistake.
//!
//! The netlink layer itself never holds a guard across an `.await`: it enters a pod namespace
//! only for synchronous steps — creating a netlink socket (a socket belongs to the namespace it
//! was created in, for good, whichever thread later drives it; see
//! [`crate::netlink::Netlink::open_in`]) and writing `/proc/sys` files. Its futures are `Send`.

use std::fs::File;
use std::io;
use std::marker::PhantomData;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::path::{Path, PathBuf};

use nix::sched::{setns, CloneFlags};

use crate::netlink::NetError;

/// The calling thread's own network namespace. `/proc/self` would name the thread-group
/// leader, whose namespace may differ from this thread's.
const THREAD_NETNS: &str = "/proc/thread-self/ns/net";

/// An open handle on a network namespace (e.g. `/var/run/netns/cni-1234` or
/// `/proc/<pid>/ns/net`). Holding it keeps the namespace alive; its fd is what
/// `IFLA_NET_NS_FD` takes to create a link directly inside the namespace.
#[derive(Debug)]
pub struct Netns {
    file: File,
    path: PathBuf,
}

impl Netns {
    /// Opens the namespace at `path`.
    ///
    /// # Errors
    /// [`NetError::Netns`] when the path cannot be opened (a missing path has kind `NotFound`).
    pub fn open(path: impl AsRef<Path>) -> Result<Self, NetError> {
        let path = path.as_ref().to_path_buf();
        match File::open(&path) {
            Ok(file) => Ok(Self { file, path }),
            Err(source) => Err(NetError::Netns {
                op: "open network namespace",
                path,
                source,
            }),
        }
    }

    /// Opens the calling thread's current namespace.
    ///
    /// # Errors
    /// [`NetError::Netns`] when `/proc/thread-self/ns/net` cannot be opened.
    pub fn current() -> Result<Self, NetError> {
        Self::open(THREAD_NETNS)
    }

    /// The path this handle was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` with the calling thread inside this namespace, then returns to the original one.
    ///
    /// # Errors
    /// [`NetError::Netns`] when the namespace cannot be entered; `f` has not run then.
    pub fn run<T>(&self, f: impl FnOnce() -> T) -> Result<T, NetError> {
        let _guard = NetnsGuard::enter_ns(self)?;
        Ok(f())
    }
}

impl AsFd for Netns {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

impl AsRawFd for Netns {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

/// The calling thread is inside another network namespace while this guard lives; dropping it
/// moves the thread back to the namespace it was in before, so an early `?` can never leave the
/// thread in a pod's namespace. Guards nest (enter A, enter B, drop B → in A, drop A → back).
///
/// `!Send`: the guard must be dropped on the thread that created it.
#[derive(Debug)]
#[must_use = "the thread leaves the namespace again when the guard is dropped"]
pub struct NetnsGuard {
    original: File,
    target: PathBuf,
    _not_send: PhantomData<*const ()>,
}

impl NetnsGuard {
    /// Moves the calling thread into the namespace at `path`.
    ///
    /// # Errors
    /// [`NetError::Netns`] when the current or the target namespace cannot be opened or entered;
    /// the thread is still in its original namespace then.
    pub fn enter(path: impl AsRef<Path>) -> Result<Self, NetError> {
        Self::enter_ns(&Netns::open(path)?)
    }

    /// Moves the calling thread into `ns`.
    ///
    /// # Errors
    /// As [`NetnsGuard::enter`].
    pub fn enter_ns(ns: &Netns) -> Result<Self, NetError> {
        // Open the way back before leaving: once inside, /proc/thread-self names the target.
        let original = File::open(THREAD_NETNS).map_err(|source| NetError::Netns {
            op: "open network namespace",
            path: THREAD_NETNS.into(),
            source,
        })?;
        setns(ns.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|errno| NetError::Netns {
            op: "enter network namespace",
            path: ns.path.clone(),
            source: io::Error::from(errno),
        })?;
        Ok(Self {
            original,
            target: ns.path.clone(),
            _not_send: PhantomData,
        })
    }
}

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        if let Err(errno) = setns(self.original.as_fd(), CloneFlags::CLONE_NEWNET) {
            // Cannot happen short of a kernel bug (we hold an fd of the original namespace), and
            // if it did, this thread would go on creating links and addresses in the pod's
            // namespace: stopping the process is the only safe answer.
            eprintln!(
                "static-macvlan: fatal: cannot leave network namespace {}: {errno}",
                self.target.display()
            );
            std::process::abort();
        }
    }
}

/// Writes `value` to the sysctl `key` (a path below `/proc/sys`, e.g.
/// `net/ipv4/conf/eth0/arp_notify`) of the calling thread's current network namespace.
///
/// `/proc/sys/net` shows the namespace of the thread that opens the file, so this acts inside
/// a pod when called under a [`NetnsGuard`] for it.
///
/// # Errors
/// [`NetError::Sysctl`] when the file cannot be written (`NotFound` when the key does not exist,
/// e.g. IPv6 keys with IPv6 disabled).
pub fn write_sysctl(key: &str, value: &str) -> Result<(), NetError> {
    let path = Path::new("/proc/sys").join(key);
    std::fs::write(&path, value).map_err(|source| NetError::Sysctl {
        op: "write",
        path,
        source,
    })
}

/// Reads the sysctl `key` of the calling thread's current network namespace, trimmed.
///
/// # Errors
/// [`NetError::Sysctl`] when the file cannot be read.
pub fn read_sysctl(key: &str) -> Result<String, NetError> {
    let path = Path::new("/proc/sys").join(key);
    std::fs::read_to_string(&path)
        .map(|s| s.trim().to_string())
        .map_err(|source| NetError::Sysctl {
            op: "read",
            path,
            source,
        })
}
