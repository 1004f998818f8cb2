//! What an ADD allocates, before anything is reserved: the netconf, the original project's pod
//! annotations (`vlan`, `static-ip`, `static-mac`, read from the pod mirror in etcd), the
//! AllocationRules and the subnets' selectors. Pure functions over what was read from etcd; the
//! waiting for a pod mirror is the caller's (see [`Step::WaitForMirror`]).
//!
//! Precedence (documented in `docs/cni-plugin.md`):
//! - subnet: the netconf's `subnet`, else the pod's `vlan` annotation, else the matching rule's
//!   `subnet`/`subnets` (tried in order, first with room);
//! - IP and MAC: `runtimeConfig`, `args.cni`, `CNI_ARGS`, then the `static-ip`/`static-mac`
//!   annotations, then the matching rule's `ip`/`mac`. Explicit requests beat a rule's
//!   suggestion; policy that must forbid a request says `deny` (the rule sees the request in
//!   `attachment.ip`/`.mac`/`.subnet`) or uses a subnet selector, which applies to every request.

use std::time::Duration;

use serde_json::Value;
use static_macvlan_allocator::keys::check_segment;
use static_macvlan_allocator::model::PodRecord;
use static_macvlan_allocator::rules::{
    compile_selector, selector_allows, AttachmentInfo, Budget, Context, PodInfo, PodMetadata,
    RuleError, RuleSet, Sticky,
};
use static_macvlan_allocator::{MacAddr, Owner, Subnet};

use crate::conf::{self, IpWanted, NetConf, Requested, RuntimeEnv};
use crate::errors::Error;

/// The original project's annotations, as the operator mirrors them.
pub const STATIC_IP_ANNOTATION: &str = "static-ip";
pub const STATIC_MAC_ANNOTATION: &str = "static-mac";
pub const VLAN_ANNOTATION: &str = "vlan";

/// The pod mirror as far as this ADD knows it.
#[derive(Clone, Debug, Default)]
pub struct Mirror {
    /// The record of this pod (same UID, or any UID when CNI_ARGS carry none).
    pub record: Option<PodRecord>,
    /// A record of that namespace/name exists, but for another pod UID (a predecessor): the
    /// operator runs and has not caught up yet.
    pub stale: bool,
    /// Whether this ADD has already waited (it waits at most once, at most
    /// `podMirrorWaitSeconds`), or cannot wait at all (no pod name in CNI_ARGS, wait 0).
    pub waited: bool,
    /// `<namespace>/<name>` for messages, `None` without K8S args.
    pub pod: Option<String>,
}

impl Mirror {
    /// Classifies what was read at `<prefix>/pods/<ns>/<name>` for a pod of UID `uid`.
    pub fn of(read: Option<PodRecord>, uid: Option<&str>, pod: Option<String>) -> Mirror {
        let (record, stale) = match (read, uid) {
            (Some(r), Some(uid)) if r.uid != uid => (None, true),
            (r, _) => (r, false),
        };
        Mirror {
            record,
            stale,
            waited: pod.is_none(),
            pod,
        }
    }

    fn metadata(&self) -> Option<PodMetadata> {
        self.record.as_ref().map(|r| PodMetadata {
            labels: r.labels.clone(),
            annotations: r.annotations.clone(),
        })
    }

    /// What an error says about the wait.
    fn note(&self, wait: Duration) -> String {
        match &self.pod {
            None => "; CNI_ARGS name no pod, so there is no pod mirror to read".into(),
            Some(p) if wait.is_zero() => {
                format!("; no pod mirror for {p} (podMirrorWaitSeconds is 0: not waited)")
            }
            Some(p) => format!(
                "; no pod mirror for {p} appeared within podMirrorWaitSeconds ({} s) — is the \
                 operator running?",
                wait.as_secs()
            ),
        }
    }
}

/// The original annotations that apply to this attachment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Annotations {
    pub vlan: Option<String>,
    pub ip: Option<Requested<IpWanted>>,
    pub mac: Option<Requested<MacAddr>>,
}

/// Reads `vlan`, `static-ip` and `static-mac` from the pod mirror. When `vlan` names a subnet
/// other than the netconf's, the annotations are for another network: none applies here.
///
/// # Errors
/// [`Error::Config`] (code 7) naming `annotation <name>` and the value.
pub fn annotations(record: &PodRecord, netconf_subnet: Option<&str>) -> Result<Annotations, Error> {
    let get = |k: &str| {
        record
            .annotations
            .get(k)
            .map(|v| v.trim())
            .filter(|v| !v.is_empty())
    };
    let field = |k: &str| format!("annotation {k}");
    let vlan = match get(VLAN_ANNOTATION) {
        None => None,
        Some(v) => {
            if netconf_subnet.is_some_and(|s| s != v) {
                return Ok(Annotations::default());
            }
            check_segment(VLAN_ANNOTATION, v).map_err(|e| {
                Error::config(
                    field(VLAN_ANNOTATION),
                    Value::from(v),
                    format!("is not a subnet name: {}", reason(e)),
                )
            })?;
            Some(v.to_string())
        }
    };
    let ip = match get(STATIC_IP_ANNOTATION) {
        None => None,
        Some(v) if v.eq_ignore_ascii_case("auto") => None,
        Some(v) => {
            let wanted = conf::parse_ip_wanted(v).ok_or_else(|| {
                Error::config(
                    field(STATIC_IP_ANNOTATION),
                    Value::from(v),
                    "must be an IP address (or CIDR) or \"auto\"",
                )
            })?;
            Some(Requested {
                value: wanted,
                field: field(STATIC_IP_ANNOTATION),
                from_env: false,
            })
        }
    };
    let mac = match get(STATIC_MAC_ANNOTATION) {
        None => None,
        Some(v) if v.eq_ignore_ascii_case("auto") => None,
        Some(v) => {
            let mac = conf::parse_mac(v)
                .map_err(|r| Error::config(field(STATIC_MAC_ANNOTATION), Value::from(v), r))?;
            Some(Requested {
                value: mac,
                field: field(STATIC_MAC_ANNOTATION),
                from_env: false,
            })
        }
    };
    Ok(Annotations { vlan, ip, mac })
}

fn reason(e: static_macvlan_allocator::Error) -> String {
    match e {
        static_macvlan_allocator::Error::Invalid { reason, .. } => reason,
        other => other.to_string(),
    }
}

/// What an ADD is to allocate, decided before anything is reserved.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Subnets to try in order; the next is tried only when one is full (or refuses by
    /// selector).
    pub subnets: Vec<String>,
    /// The static IP requests in force (the first of the subnet's family is used).
    pub ips: Vec<Requested<IpWanted>>,
    pub mac: Option<Requested<MacAddr>>,
    pub sticky: Option<Sticky>,
    /// For the log line: where the subnet and the requests came from, and the rules' reason.
    pub reason: String,
    /// The evaluation context (selectors get it with the candidate subnet and final requests).
    pub ctx: Context,
}

/// The outcome of [`plan`].
#[derive(Debug)]
pub enum Step {
    Plan(Box<Plan>),
    /// Something needs the pod mirror, which is not there (yet): wait for it (once, bounded)
    /// and plan again. The string says why.
    WaitForMirror(String),
}

/// Decides subnet(s), requests and stickiness for one attachment.
///
/// # Errors
/// Code 7 for a bad annotation or when nothing names a subnet; 115 when a rule denies; 117/118
/// for rule errors.
pub fn plan(
    conf: &NetConf,
    rt: &RuntimeEnv,
    owner: &Owner,
    rules: &RuleSet,
    mirror: &Mirror,
) -> Result<Step, Error> {
    let ann = match (&mirror.record, conf.pod_annotations) {
        (Some(r), true) => annotations(r, conf.subnet.as_deref())?,
        _ => Annotations::default(),
    };
    let explicit_ips = conf.static_ips(&rt.args);
    let mut ips: Vec<Requested<IpWanted>> = if explicit_ips.is_empty() {
        ann.ip.into_iter().collect()
    } else {
        explicit_ips.to_vec()
    };
    let mut mac = conf.static_mac(&rt.args).cloned().or(ann.mac);
    let mut from = Vec::new();
    let requested_subnet = match (&conf.subnet, ann.vlan) {
        (Some(s), _) => {
            from.push(format!("subnet {s:?} from the netconf"));
            Some(s.clone())
        }
        (None, Some(v)) => {
            from.push(format!("subnet {v:?} from annotation vlan"));
            Some(v)
        }
        (None, None) => None,
    };
    let ctx = Context {
        pod: PodInfo {
            namespace: rt.args.pod_namespace.clone().unwrap_or_default(),
            name: rt.args.pod_name.clone().unwrap_or_default(),
            uid: owner.pod_uid.clone(),
            node: conf.node.clone(),
            metadata: mirror.metadata(),
        },
        attachment: AttachmentInfo {
            network: conf.name.clone(),
            ifname: rt.ifname.clone(),
            subnet: requested_subnet.clone().unwrap_or_default(),
            ip: ips
                .first()
                .map(|r| r.value.ip.to_string())
                .unwrap_or_default(),
            mac: mac
                .as_ref()
                .map(|r| r.value.to_string())
                .unwrap_or_default(),
        },
    };
    let decision = match rules.evaluate(&ctx, &Budget::default()) {
        Ok(d) => d,
        Err(e @ RuleError::MetadataUnavailable { .. }) => {
            if !mirror.waited {
                return Ok(Step::WaitForMirror(e.to_string()));
            }
            return Err(Error::Rule {
                note: mirror.note(conf.pod_mirror_wait),
                source: e,
            });
        }
        Err(e) => {
            return Err(Error::Rule {
                source: e,
                note: String::new(),
            })
        }
    };
    if let Some(message) = decision.deny {
        return Err(Error::Denied {
            rule: decision.rule.unwrap_or_default(),
            message,
        });
    }
    let rule = decision.rule.clone().unwrap_or_default();
    let subnets = match requested_subnet {
        Some(s) => vec![s],
        None if !decision.subnets.is_empty() => {
            from.push(format!(
                "subnets {:?} from AllocationRule {rule:?}",
                decision.subnets
            ));
            decision.subnets.clone()
        }
        None => {
            if conf.pod_annotations && mirror.record.is_none() && !mirror.waited {
                return Ok(Step::WaitForMirror(
                    "the netconf names no subnet and no rule chose one: waiting for the pod \
                     mirror's vlan annotation"
                        .into(),
                ));
            }
            let why = match (&mirror.record, conf.pod_annotations) {
                (_, false) => String::new(),
                (Some(_), true) => ", the pod has no vlan annotation".into(),
                (None, true) => mirror.note(conf.pod_mirror_wait).replacen("; ", ", ", 1),
            };
            return Err(Error::config(
                "subnet",
                "null",
                format!(
                    "is not set: the netconf names none, no AllocationRule chose one ({}){why}",
                    decision.reason
                ),
            ));
        }
    };
    if ips.is_empty() {
        if let Some(ip) = decision.ip {
            ips.push(Requested {
                value: IpWanted { ip, prefix: None },
                field: format!("AllocationRule {rule:?} spec.ip"),
                from_env: false,
            });
            from.push(format!("ip from AllocationRule {rule:?}"));
        }
    } else {
        from.push(format!("ip from {}", ips[0].field));
    }
    if mac.is_none() {
        if let Some(m) = decision.mac {
            mac = Some(Requested {
                value: m,
                field: format!("AllocationRule {rule:?} spec.mac"),
                from_env: false,
            });
            from.push(format!("mac from AllocationRule {rule:?}"));
        }
    } else if let Some(m) = &mac {
        from.push(format!("mac from {}", m.field));
    }
    if let Some(s) = &decision.sticky {
        from.push(format!(
            "sticky key {:?} held {} s",
            s.key,
            s.hold.as_secs()
        ));
    }
    from.push(decision.reason.clone());
    Ok(Step::Plan(Box::new(Plan {
        subnets,
        ips,
        mac,
        sticky: decision.sticky,
        reason: from.join("; "),
        ctx,
    })))
}

/// What a subnet's selector says about the attachment.
#[derive(Debug)]
pub enum Admit {
    Yes,
    WaitForMirror(String),
}

/// Evaluates `subnet`'s selector (if any) for the attachment, static requests included.
///
/// # Errors
/// [`Error::SubnetRefused`] (116) when it is false; [`Error::Rule`] (117/118) when it cannot be
/// compiled or evaluated (fail closed).
pub fn admit(
    subnet: &Subnet,
    plan: &Plan,
    ip: Option<std::net::IpAddr>,
    mac: Option<MacAddr>,
    mirror: &Mirror,
    wait: Duration,
) -> Result<Admit, Error> {
    let Some(source) = subnet.selector.as_deref() else {
        return Ok(Admit::Yes);
    };
    let rule_err = |source: RuleError, note: String| Error::Rule { source, note };
    let selector =
        compile_selector(&subnet.name, source).map_err(|e| rule_err(e, String::new()))?;
    let mut ctx = plan.ctx.clone();
    ctx.pod.metadata = mirror.metadata();
    ctx.attachment.subnet = subnet.name.clone();
    ctx.attachment.ip = ip.map(|i| i.to_string()).unwrap_or_default();
    ctx.attachment.mac = mac.map(|m| m.to_string()).unwrap_or_default();
    match selector_allows(&selector, &ctx, &Budget::default()) {
        Ok(true) => Ok(Admit::Yes),
        Ok(false) => {
            let mut what = format!("pod {}/{}", ctx.pod.namespace, ctx.pod.name);
            if !ctx.attachment.ip.is_empty() {
                what.push_str(&format!(" with ip {}", ctx.attachment.ip));
            }
            if !ctx.attachment.mac.is_empty() {
                what.push_str(&format!(" with mac {}", ctx.attachment.mac));
            }
            Err(Error::SubnetRefused {
                subnet: subnet.name.clone(),
                selector: source.to_string(),
                what,
            })
        }
        Err(e @ RuleError::MetadataUnavailable { .. }) if !mirror.waited => {
            Ok(Admit::WaitForMirror(e.to_string()))
        }
        Err(e @ RuleError::MetadataUnavailable { .. }) => Err(rule_err(e, mirror.note(wait))),
        Err(e) => Err(rule_err(e, String::new())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn record(pairs: &[(&str, &str)]) -> PodRecord {
        PodRecord {
            uid: "u1".into(),
            annotations: pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
            ..PodRecord::default()
        }
    }

    #[test]
    fn annotations_parse_and_apply() {
        let a = annotations(
            &record(&[
                ("static-ip", "10.0.0.5"),
                ("static-mac", "02:00:00:00:00:05"),
                ("vlan", "lan"),
            ]),
            Some("lan"),
        )
        .unwrap();
        assert_eq!(a.vlan.as_deref(), Some("lan"));
        assert_eq!(a.ip.unwrap().value.ip.to_string(), "10.0.0.5");
        assert_eq!(a.mac.unwrap().value.to_string(), "02:00:00:00:00:05");

        // Another network's annotations.
        let a = annotations(
            &record(&[("static-ip", "bad"), ("vlan", "other")]),
            Some("lan"),
        );
        assert_eq!(a.unwrap(), Annotations::default());

        let a = annotations(&record(&[("static-ip", "auto")]), None).unwrap();
        assert_eq!(a, Annotations::default());

        for (k, v) in [
            ("static-ip", "10.0.0.300"),
            ("static-mac", "01:00:5e:00:00:01"),
            ("vlan", "a/b"),
        ] {
            let e = annotations(&record(&[(k, v)]), None).unwrap_err();
            assert_eq!(e.code(), 7, "{e}");
            let s = e.to_string();
            assert!(
                s.contains(&format!("annotation {k}")) && s.contains(v),
                "{s}"
            );
        }
    }

    #[test]
    fn mirror_of_another_uid_is_stale() {
        let m = Mirror::of(Some(record(&[])), Some("u2"), Some("default/p".into()));
        assert!(m.record.is_none() && m.stale && !m.waited);
        let m = Mirror::of(Some(record(&[])), Some("u1"), Some("default/p".into()));
        assert!(m.record.is_some() && !m.stale);
        let m = Mirror::of(None, None, None);
        assert!(m.waited, "nothing to wait for without a pod name");
    }
}
