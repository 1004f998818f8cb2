//! An AllocationRule's spec as the operator mirrors it into `<prefix>/config/rules/<name>`
//! (camelCase JSON inside [`Mirrored`](crate::Mirrored)), its structural validation, and its
//! content hash.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{invalid, RuleError};
use crate::keys::check_segment;

/// The longest `sticky.holdSeconds`: 30 days. Longer holds are better expressed as a static
/// address.
pub const MAX_HOLD_SECONDS: u32 = 30 * 24 * 3600;

/// Longest `deny.message`, which ends up in the CNI error the runtime shows.
const MAX_DENY_MESSAGE: usize = 1024;

/// What an AllocationRule says: when it applies (`match`) and what it gives.
///
/// Rules are tried by `priority`, highest first, ties by name ascending; the first whose
/// `match` is true decides. Actions: `subnet` or `subnets` (tried in order, first with room),
/// `ip` and `mac` (CEL string expressions; `""` means none), `sticky`, or `deny` alone.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AllocationRuleSpec {
    #[serde(default)]
    pub priority: i32,
    /// CEL, must evaluate to a bool.
    pub r#match: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnets: Option<Vec<String>>,
    /// CEL, must evaluate to a string: an IP address, or `""` for none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    /// CEL, must evaluate to a string: a unicast MAC address, or `""` for none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deny: Option<DenySpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sticky: Option<StickySpec>,
}

/// Refuse the attachment: ADD fails with `message`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DenySpec {
    pub message: String,
}

/// Keep the attachment's addresses reserved for `key` for `holdSeconds` after DEL, so that a new
/// pod with the same key (a re-created StatefulSet pod, a migrated VM) gets them back.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StickySpec {
    /// CEL, must evaluate to a non-empty string. Default: `pod.namespace + "/" + pod.name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    pub hold_seconds: u32,
}

/// The sticky key expression used when `sticky.key` is omitted.
pub(crate) const DEFAULT_STICKY_KEY: &str = r#"pod.namespace + "/" + pod.name"#;

impl AllocationRuleSpec {
    /// The subnets the rule names, in order: `[subnet]`, `subnets`, or none.
    pub fn subnet_list(&self) -> Vec<String> {
        match (&self.subnet, &self.subnets) {
            (Some(s), _) => vec![s.clone()],
            (None, Some(list)) => list.clone(),
            (None, None) => Vec::new(),
        }
    }

    /// Checks everything but the CEL expressions: the name, exclusive fields, bounds.
    ///
    /// # Errors
    /// [`RuleError::Invalid`] naming the first offending field.
    pub fn validate(&self, name: &str) -> Result<(), RuleError> {
        segment(name, "metadata.name", name)?;
        if let (Some(_), Some(_)) = (&self.subnet, &self.subnets) {
            return Err(invalid(
                name,
                "spec.subnets",
                "subnet and subnets are mutually exclusive: use subnets alone for an ordered list",
            ));
        }
        if let Some(subnet) = &self.subnet {
            segment(name, "spec.subnet", subnet)?;
        }
        if let Some(list) = &self.subnets {
            if list.is_empty() {
                return Err(invalid(
                    name,
                    "spec.subnets",
                    "must not be empty (omit it instead)",
                ));
            }
            for (i, subnet) in list.iter().enumerate() {
                let field = format!("spec.subnets[{i}]");
                segment(name, &field, subnet)?;
                if list[..i].contains(subnet) {
                    return Err(invalid(
                        name,
                        &field,
                        format!("lists subnet {subnet:?} twice"),
                    ));
                }
            }
        }
        if let Some(deny) = &self.deny {
            let others: Vec<&str> = [
                ("subnet", self.subnet.is_some()),
                ("subnets", self.subnets.is_some()),
                ("ip", self.ip.is_some()),
                ("mac", self.mac.is_some()),
                ("sticky", self.sticky.is_some()),
            ]
            .into_iter()
            .filter_map(|(f, set)| set.then_some(f))
            .collect();
            if !others.is_empty() {
                return Err(invalid(
                    name,
                    "spec.deny",
                    format!(
                        "deny excludes every other action, but {} is set too",
                        others.join(", ")
                    ),
                ));
            }
            let message = deny.message.trim();
            if message.is_empty() {
                return Err(invalid(name, "spec.deny.message", "must not be empty"));
            }
            if message.len() > MAX_DENY_MESSAGE {
                return Err(invalid(
                    name,
                    "spec.deny.message",
                    format!("is longer than {MAX_DENY_MESSAGE} bytes"),
                ));
            }
            if message.chars().any(char::is_control) {
                return Err(invalid(
                    name,
                    "spec.deny.message",
                    "must not contain control characters (it is logged on one line)",
                ));
            }
        }
        if let Some(sticky) = &self.sticky {
            if sticky.hold_seconds == 0 || sticky.hold_seconds > MAX_HOLD_SECONDS {
                return Err(invalid(
                    name,
                    "spec.sticky.holdSeconds",
                    format!(
                        "must be 1 to {MAX_HOLD_SECONDS} (30 days), got {}",
                        sticky.hold_seconds
                    ),
                ));
            }
            if sticky.key.as_deref().is_some_and(|k| k.trim().is_empty()) {
                return Err(invalid(
                    name,
                    "spec.sticky.key",
                    format!("must not be empty (omit it for the default {DEFAULT_STICKY_KEY})"),
                ));
            }
        }
        let has_action = self.subnet.is_some()
            || self.subnets.is_some()
            || self.ip.is_some()
            || self.mac.is_some()
            || self.sticky.is_some()
            || self.deny.is_some();
        if !has_action {
            return Err(invalid(
                name,
                "spec",
                "no action: set at least one of subnet, subnets, ip, mac, sticky or deny",
            ));
        }
        Ok(())
    }
}

/// Names end up in etcd keys: the key module's rules apply.
fn segment(rule: &str, field: &str, value: &str) -> Result<(), RuleError> {
    check_segment(field, value).map_err(|e| {
        let reason = match e {
            crate::Error::Invalid { reason, .. } => reason,
            other => other.to_string(),
        };
        invalid(rule, field, format!("{value:?} {reason}"))
    })
}

/// A stable content hash of a spec: lowercase hex SHA-256 of its JSON as serialized by this
/// crate (fields in declaration order, absent options omitted). Equal specs hash equal across
/// processes, machines and versions of this crate that keep the struct, so the operator can
/// mirror it and the plugin can key a cache of compiled rules by it.
pub fn content_hash(spec: &AllocationRuleSpec) -> String {
    let json = serde_json::to_vec(spec).expect("a rule spec always serializes");
    hex(&Sha256::digest(&json))
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}
