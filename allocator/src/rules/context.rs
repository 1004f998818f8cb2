//! What an expression sees: the variables `pod` and `attachment`.

use std::collections::{BTreeMap, HashMap};

use cel::objects::Value;

use super::env::env;

/// The pod being attached. Everything but `metadata` comes from CNI_ARGS and the node, so it is
/// always there; labels and annotations come from the pod mirror in etcd.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodInfo {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    /// The node the plugin runs on.
    pub node: String,
    /// `None` when the pod mirror is not (yet) in etcd: evaluating an expression that reads
    /// labels or annotations then fails with
    /// [`RuleError::MetadataUnavailable`](super::RuleError::MetadataUnavailable).
    pub metadata: Option<PodMetadata>,
}

/// Labels and annotations from the pod mirror.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodMetadata {
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
}

/// The interface being set up. Absent values are empty strings, never missing fields, so
/// `attachment.subnet == ""` is how to test for "the netconf names no subnet".
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AttachmentInfo {
    /// The netconf's `name` (for Multus, the NetworkAttachmentDefinition's).
    pub network: String,
    /// The interface name in the pod, e.g. `net1` or `eth0`.
    pub ifname: String,
    /// The subnet the netconf names, or `""`.
    pub subnet: String,
    /// The requested static IP (runtimeConfig or annotation), or `""`.
    pub ip: String,
    /// The requested static MAC, or `""`.
    pub mac: String,
}

/// The input of an evaluation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Context {
    pub pod: PodInfo,
    pub attachment: AttachmentInfo,
}

fn string_map(m: &BTreeMap<String, String>) -> Value {
    Value::from(
        m.iter()
            .map(|(k, v)| (k.clone(), Value::from(v.clone())))
            .collect::<HashMap<String, Value>>(),
    )
}

impl Context {
    /// The pod that compile-time trial runs use: every field set, no labels.
    pub(crate) fn sample() -> Context {
        Context {
            pod: PodInfo {
                namespace: "default".to_owned(),
                name: "sample-0".to_owned(),
                uid: "00000000-0000-0000-0000-000000000000".to_owned(),
                node: "node-1".to_owned(),
                metadata: Some(PodMetadata::default()),
            },
            attachment: AttachmentInfo {
                network: "sample".to_owned(),
                ifname: "net1".to_owned(),
                ..AttachmentInfo::default()
            },
        }
    }

    /// The CEL activation: `pod` and `attachment` as maps (the checker has already made sure
    /// that only their declared fields are read).
    pub(crate) fn to_cel(&self) -> cel::Context<'static, 'static> {
        let mut ctx = cel::Context::with_env(env().clone());
        let p = &self.pod;
        let mut pod: HashMap<String, Value> = [
            ("namespace", &p.namespace),
            ("name", &p.name),
            ("uid", &p.uid),
            ("node", &p.node),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), Value::from(v.clone())))
        .collect();
        if let Some(meta) = &p.metadata {
            pod.insert("labels".to_owned(), string_map(&meta.labels));
            pod.insert("annotations".to_owned(), string_map(&meta.annotations));
        }
        ctx.add_variable_from_value("pod", pod);
        let a = &self.attachment;
        let attachment: HashMap<String, Value> = [
            ("network", &a.network),
            ("ifname", &a.ifname),
            ("subnet", &a.subnet),
            ("ip", &a.ip),
            ("mac", &a.mac),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), Value::from(v.clone())))
        .collect();
        ctx.add_variable_from_value("attachment", attachment);
        ctx
    }
}
