//! Why a node could not start, in words an operator can act on: a pure
//! mapping from what failed (errno, message, what the node was doing, and
//! the platform settings read beside it) to a typed [`StartCause`] that
//! names the cause and the fix. Only the callers in
//! [`crate::lifecycle`] read the system; this module never does, so every
//! cause is unit-tested.

use std::fmt;

/// Where README lists the platform needs each fix refers to.
pub const REQUIREMENTS: &str = "README.md (section Requirements)";

/// What the node was doing when it failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tried {
    /// Starting a glommio executor: io_uring rings and buffer registration.
    Executor,
    /// Binding or opening a socket.
    Socket,
}

/// A start-up failure as the node saw it, with the settings read beside it.
#[derive(Clone, Copy, Debug)]
pub struct Failure<'a> {
    pub tried: Tried,
    /// The OS error number, when the error carries one.
    pub errno: Option<i32>,
    /// The error's text (glommio reports the memlock check only in text).
    pub message: &'a str,
    /// `/proc/sys/kernel/io_uring_disabled`, when readable.
    pub io_uring_disabled: Option<u32>,
    /// The soft `RLIMIT_MEMLOCK`, in bytes, when readable.
    pub memlock_bytes: Option<u64>,
    /// The soft `RLIMIT_NOFILE`, when readable.
    pub nofile: Option<u64>,
}

/// Why the node could not start; `Display` gives the cause and the fix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StartCause {
    /// `io_uring_setup` was refused (EPERM/EACCES): a seccomp profile or
    /// `kernel.io_uring_disabled`.
    IoUringBlocked { io_uring_disabled: Option<u32> },
    /// `io_uring_setup` does not exist (ENOSYS): a kernel without io_uring.
    IoUringUnsupported,
    /// Locked memory is too low for the rings and registered buffers.
    MemlockTooLow { memlock_bytes: Option<u64> },
    /// The open-file limit is too low (EMFILE/ENFILE, or below
    /// `max_connections` + the margin).
    FdLimitTooLow {
        soft: Option<u64>,
        wanted: Option<u64>,
    },
    /// Not a platform limit this module knows.
    Other,
}

/// Maps a start-up failure to its cause.
pub fn diagnose(failure: &Failure<'_>) -> StartCause {
    if failure.message.to_ascii_lowercase().contains("memlock") {
        return StartCause::MemlockTooLow {
            memlock_bytes: failure.memlock_bytes,
        };
    }
    match (failure.tried, failure.errno) {
        (_, Some(libc::EMFILE | libc::ENFILE)) => StartCause::FdLimitTooLow {
            soft: failure.nofile,
            wanted: None,
        },
        (Tried::Executor, Some(libc::EPERM | libc::EACCES)) => StartCause::IoUringBlocked {
            io_uring_disabled: failure.io_uring_disabled,
        },
        (Tried::Executor, Some(libc::ENOSYS)) => StartCause::IoUringUnsupported,
        (Tried::Executor, Some(libc::ENOMEM)) => StartCause::MemlockTooLow {
            memlock_bytes: failure.memlock_bytes,
        },
        _ => StartCause::Other,
    }
}

/// The open-file limit as a cause, when `soft` cannot hold `wanted`
/// descriptors (`max_connections` + the margin); `None` when it can.
pub fn fd_limit(soft: u64, wanted: u64) -> Option<StartCause> {
    (soft < wanted).then_some(StartCause::FdLimitTooLow {
        soft: Some(soft),
        wanted: Some(wanted),
    })
}

fn or_unknown(v: Option<impl fmt::Display>) -> String {
    v.map_or_else(|| "unknown".to_string(), |v| v.to_string())
}

impl fmt::Display for StartCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartCause::IoUringBlocked { io_uring_disabled } => write!(
                f,
                "io_uring is blocked (seccomp or kernel.io_uring_disabled={}): \
                 run with a seccomp profile that allows io_uring_setup \
                 (Docker/containerd: --security-opt seccomp=unconfined or a custom profile) \
                 and set `sysctl kernel.io_uring_disabled=0`; see {REQUIREMENTS}",
                or_unknown(*io_uring_disabled)
            ),
            StartCause::IoUringUnsupported => write!(
                f,
                "io_uring is unavailable (io_uring_setup: ENOSYS): run on Linux 5.8 or newer \
                 built with CONFIG_IO_URING, outside a sandbox that hides the syscall; \
                 see {REQUIREMENTS}"
            ),
            StartCause::MemlockTooLow { memlock_bytes } => write!(
                f,
                "locked-memory limit too low for the io_uring rings and buffers \
                 (RLIMIT_MEMLOCK={} bytes): raise it (`ulimit -l`, systemd LimitMEMLOCK=1G; glommio needs 512 KiB, \
                 and without CAP_IPC_LOCK every executor's rings and io_memory_kib count too) \
                 or lower [node] io_memory_kib / ring_depth; see {REQUIREMENTS}",
                or_unknown(*memlock_bytes)
            ),
            StartCause::FdLimitTooLow { soft, wanted } => {
                write!(
                    f,
                    "open-file limit too low (RLIMIT_NOFILE={}",
                    or_unknown(*soft)
                )?;
                if let Some(wanted) = wanted {
                    write!(
                        f,
                        ", below the {wanted} that max_connections plus the margin need; \
                         accepts past the limit fail"
                    )?;
                }
                write!(
                    f,
                    "): raise it (`ulimit -n`, systemd LimitNOFILE=) or lower \
                     [limits] max_connections; see {REQUIREMENTS} and kernel-tuning/"
                )
            }
            StartCause::Other => write!(f, "see {REQUIREMENTS} for the platform needs"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn executor(errno: Option<i32>, message: &str) -> Failure<'_> {
        Failure {
            tried: Tried::Executor,
            errno,
            message,
            io_uring_disabled: Some(2),
            memlock_bytes: Some(65_536),
            nofile: Some(1_024),
        }
    }

    #[test]
    fn eperm_from_the_executor_is_a_blocked_io_uring() {
        let cause = diagnose(&executor(Some(libc::EPERM), "Operation not permitted"));
        assert_eq!(
            cause,
            StartCause::IoUringBlocked {
                io_uring_disabled: Some(2)
            }
        );
        let text = cause.to_string();
        assert!(
            text.starts_with("io_uring is blocked (seccomp or kernel.io_uring_disabled=2)"),
            "{text}"
        );
        assert!(text.contains("Requirements"), "{text}");
        let eacces = diagnose(&executor(Some(libc::EACCES), "Permission denied"));
        assert!(matches!(eacces, StartCause::IoUringBlocked { .. }));
    }

    #[test]
    fn enosys_is_a_kernel_without_io_uring() {
        let cause = diagnose(&executor(Some(libc::ENOSYS), "Function not implemented"));
        assert_eq!(cause, StartCause::IoUringUnsupported);
        assert!(cause.to_string().contains("5.8"));
    }

    #[test]
    fn glommio_memlock_check_and_enomem_are_memlock() {
        // glommio's own check carries no errno, only text.
        let check = diagnose(&executor(None, "MemLockLimit(65536/524288)"));
        assert_eq!(
            check,
            StartCause::MemlockTooLow {
                memlock_bytes: Some(65_536)
            }
        );
        assert!(check.to_string().contains("RLIMIT_MEMLOCK=65536 bytes"));
        assert!(check.to_string().contains("LimitMEMLOCK"));
        let enomem = diagnose(&executor(Some(libc::ENOMEM), "Cannot allocate memory"));
        assert!(matches!(enomem, StartCause::MemlockTooLow { .. }));
    }

    #[test]
    fn emfile_is_the_fd_limit_anywhere() {
        for tried in [Tried::Executor, Tried::Socket] {
            let failure = Failure {
                tried,
                ..executor(Some(libc::EMFILE), "Too many open files")
            };
            assert_eq!(
                diagnose(&failure),
                StartCause::FdLimitTooLow {
                    soft: Some(1_024),
                    wanted: None
                }
            );
        }
    }

    #[test]
    fn fd_limit_below_max_connections_names_both() {
        assert_eq!(fd_limit(2_048, 2_048), None);
        let cause = fd_limit(1_024, 11_024).expect("too low");
        let text = cause.to_string();
        assert!(text.contains("RLIMIT_NOFILE=1024"), "{text}");
        assert!(text.contains("11024"), "{text}");
        assert!(text.contains("LimitNOFILE"), "{text}");
    }

    #[test]
    fn a_socket_eperm_or_an_unknown_errno_is_not_io_uring() {
        let socket = Failure {
            tried: Tried::Socket,
            ..executor(Some(libc::EPERM), "Operation not permitted")
        };
        assert_eq!(diagnose(&socket), StartCause::Other);
        assert_eq!(
            diagnose(&executor(Some(libc::EINVAL), "Invalid argument")),
            StartCause::Other
        );
    }
}
