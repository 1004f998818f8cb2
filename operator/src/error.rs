//! The operator library's error type and the exit codes of the CLI.

use crate::manifest::DocError;

/// Process exit codes of the CLI (documented in `--help`).
pub mod exit {
    /// Success.
    pub const OK: u8 = 0;
    /// `ipam check` found problems.
    pub const PROBLEMS: u8 = 1;
    /// The address, pod or subnet asked about holds or is nothing.
    pub const NOT_FOUND: u8 = 1;
    /// Bad command line or bad input (a manifest, an address); nothing was changed.
    pub const INVALID: u8 = 2;
    /// etcd could not be reached or refused the request; nothing or not everything was done.
    pub const UNAVAILABLE: u8 = 3;
    /// etcd holds something unexpected: a reservation changed while being released, a corrupt
    /// value, another schema version.
    pub const CONFLICT: u8 = 4;
}

/// Everything that can go wrong in the operator's library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Usage or input error with its message.
    #[error("{0}")]
    Invalid(String),

    /// One or more manifest documents were rejected; nothing was written.
    #[error("{} invalid object(s), nothing was applied:\n{}", .0.len(), render(.0))]
    Manifest(Vec<DocError>),

    /// Nothing of that name or address.
    #[error("{0}")]
    NotFound(String),

    /// `ipam check` found problems (listed in its output).
    #[error("{0}")]
    Problems(String),

    /// A reservation changed under us; nothing was done for it.
    #[error("{0}")]
    Conflict(String),

    /// etcd refused or did not answer a request made by the operator itself.
    #[error("{op}: etcd: {source}")]
    Etcd {
        op: String,
        #[source]
        source: etcd_client::Error,
    },

    /// An error of the allocator.
    #[error(transparent)]
    Allocator(#[from] static_macvlan_allocator::Error),

    /// The Kubernetes API refused or did not answer a request.
    #[error("{op}: kubernetes api: {source}")]
    Kube {
        op: String,
        #[source]
        source: kube::Error,
    },

    /// A file could not be read or written.
    #[error("{op}: {source}")]
    Io {
        op: String,
        #[source]
        source: std::io::Error,
    },
}

fn render(errs: &[DocError]) -> String {
    errs.iter()
        .map(|e| format!("  {e}"))
        .collect::<Vec<_>>()
        .join("\n")
}

impl Error {
    /// The exit code of the CLI for this error.
    pub fn exit_code(&self) -> u8 {
        use static_macvlan_allocator::Error as A;
        match self {
            Error::Invalid(_) | Error::Manifest(_) | Error::Io { .. } => exit::INVALID,
            Error::NotFound(_) => exit::NOT_FOUND,
            Error::Problems(_) => exit::PROBLEMS,
            Error::Conflict(_) => exit::CONFLICT,
            Error::Etcd { .. } | Error::Kube { .. } => exit::UNAVAILABLE,
            Error::Allocator(a) => match a {
                A::Invalid { .. } | A::OutsideSubnet { .. } => exit::INVALID,
                A::SubnetNotFound(..) | A::MacPoolNotFound(..) => exit::NOT_FOUND,
                A::Unavailable { .. } | A::Etcd { .. } | A::RetriesExhausted { .. } => {
                    exit::UNAVAILABLE
                }
                _ => exit::CONFLICT,
            },
        }
    }

    pub(crate) fn etcd(op: impl Into<String>, source: etcd_client::Error) -> Self {
        Error::Etcd {
            op: op.into(),
            source,
        }
    }

    pub(crate) fn kube(op: impl Into<String>) -> impl FnOnce(kube::Error) -> Self {
        let op = op.into();
        move |source| Error::Kube { op, source }
    }

    /// A static label for metrics (`error="..."`): one value per kind of failure, never the
    /// error's text, so the label's cardinality stays bounded.
    pub fn metric_label(&self) -> &'static str {
        use static_macvlan_allocator::Error as A;
        match self {
            Error::Invalid(_) | Error::Manifest(_) => "invalid",
            Error::NotFound(_) => "not_found",
            Error::Problems(_) => "problems",
            Error::Conflict(_) => "conflict",
            Error::Etcd { .. } => "etcd",
            Error::Io { .. } => "io",
            Error::Kube { source, .. } => match source {
                kube::Error::Api(s) if s.code == 409 => "api_conflict",
                kube::Error::Api(s) if s.code == 404 => "api_not_found",
                kube::Error::Api(s) if (400..500).contains(&s.code) => "api_rejected",
                _ => "api_unavailable",
            },
            Error::Allocator(a) => match a {
                A::Unavailable { .. } | A::RetriesExhausted { .. } => "etcd_unavailable",
                A::Etcd { .. } => "etcd",
                A::SchemaMismatch { .. } => "schema_mismatch",
                A::Corrupt { .. } => "corrupt",
                _ => "allocator",
            },
        }
    }

    /// Whether the Kubernetes API answered "not found".
    pub fn is_api_not_found(&self) -> bool {
        matches!(self, Error::Kube { source: kube::Error::Api(s), .. } if s.code == 404)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes() {
        use static_macvlan_allocator::Error as A;
        let io = || std::io::Error::other("x");
        let cases = [
            (Error::Invalid("x".into()), exit::INVALID),
            (Error::Manifest(vec![]), exit::INVALID),
            (Error::NotFound("x".into()), exit::NOT_FOUND),
            (Error::Conflict("x".into()), exit::CONFLICT),
            (
                Error::etcd("get", etcd_client::Error::IoError(io())),
                exit::UNAVAILABLE,
            ),
            (
                Error::Allocator(A::Unavailable {
                    op: "x".into(),
                    source: etcd_client::Error::IoError(io()),
                }),
                exit::UNAVAILABLE,
            ),
            (
                Error::Allocator(A::SubnetNotFound("a".into(), "k".into())),
                exit::NOT_FOUND,
            ),
            (
                Error::Allocator(A::Corrupt {
                    key: "k".into(),
                    reason: "r".into(),
                }),
                exit::CONFLICT,
            ),
        ];
        for (e, code) in cases {
            assert_eq!(e.exit_code(), code, "{e}");
        }
    }
}
