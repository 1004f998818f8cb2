//! A fingerprint of the rules in etcd, so that a process can tell, from a read that transfers
//! one key and no value, whether the rules are still those it compiled before.
//!
//! The fingerprint of `<prefix>/config/rules/` is (number of keys, highest `mod_revision` among
//! them); an empty prefix is (0, 0). It changes with every change to the set of rules, because
//! etcd gives every write a revision above all earlier ones: take the prefix at revisions
//! `r1 < r2`. If some key at `r2` was written after `r1`, its `mod_revision` is above `r1`, so
//! above every `mod_revision` at `r1`: the highest grew. If none was, every key at `r2` is
//! unchanged since `r1`, so the rules at `r2` are some of those at `r1`: all of them (the same
//! count, the same rules) or fewer (a lower count). So a put (a new rule or a changed one)
//! raises the highest revision, a delete alone lowers the count, and a delete with a create
//! raises the highest revision.
//!
//! This is the one place the rule engine knows etcd's types, so that the fingerprint of a full
//! read ([`RulesFingerprint::of_kvs`]) and of the cheap read ([`RulesFingerprint::of_response`]
//! of a get with [`RulesFingerprint::read_options`]) are computed side by side.
//!
//! It relies on revisions never repeating under one prefix of one etcd. Restoring etcd from a
//! backup without bumping the revision (`etcdutl snapshot restore --bump-revision`) can reuse
//! revisions for other contents: after such a restore, clear the plugin's cache on every node
//! (see `docs/rules.md`, Performance).

use etcd_client::{GetOptions, GetResponse, KeyValue, SortOrder, SortTarget};

/// The state of the rules prefix in etcd: equal fingerprints (of one prefix of one etcd) mean
/// the same rules, key for key and value for value.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RulesFingerprint {
    /// How many rule keys there are.
    pub count: i64,
    /// The highest `mod_revision` among them; 0 when there are none.
    pub max_mod_revision: i64,
}

impl RulesFingerprint {
    /// The fingerprint of no rules at all.
    pub const EMPTY: RulesFingerprint = RulesFingerprint {
        count: 0,
        max_mod_revision: 0,
    };

    /// The fingerprint of the rules fetched in full: exactly the state these key-values show,
    /// with no second read in between that could see another one.
    pub fn of_kvs(kvs: &[KeyValue]) -> RulesFingerprint {
        RulesFingerprint {
            count: kvs.len() as i64,
            max_mod_revision: kvs.iter().map(KeyValue::mod_revision).max().unwrap_or(0),
        }
    }

    /// The options of the cheap read, a get of the rules prefix (as key) that returns only the
    /// key written last (keys only, sorted by `mod_revision` descending, limit 1) and the count
    /// of all keys (etcd counts the whole range, whatever the limit).
    pub fn read_options() -> GetOptions {
        GetOptions::new()
            .with_prefix()
            .with_keys_only()
            .with_sort(SortTarget::Mod, SortOrder::Descend)
            .with_limit(1)
    }

    /// The fingerprint from the response to a get with [`RulesFingerprint::read_options`] (on
    /// its own or in a transaction: `TxnOpResponse::Get` holds the same response).
    pub fn of_response(resp: &GetResponse) -> RulesFingerprint {
        let count = resp.count();
        RulesFingerprint {
            count,
            max_mod_revision: if count > 0 {
                resp.kvs().first().map_or(0, KeyValue::mod_revision)
            } else {
                0
            },
        }
    }
}
