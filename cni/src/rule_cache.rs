//! The node's cache of compiled AllocationRules. The plugin is a fresh process on every ADD, and
//! compiling the rules it reads from etcd (parse, type check, instrument, trial run) was most of
//! what rules cost an ADD, and reading them most of what was left. What one ADD compiled is kept
//! in `<run dir>/rules/<scope>.cache` for the next, with the [`RulesFingerprint`] of the rules it
//! was compiled from:
//!
//! - [`cached`]: when the rules' fingerprint in etcd (a read of one key name and a count) is
//!   the one the cache was written with, the rules are those the cache was compiled from, and
//!   the whole compiled set comes from the cache: the rules are not read at all.
//! - [`compile`]: otherwise, the plugin reads the rules (and their fingerprint, from the same
//!   read), and [`RuleSet::from_mirrored_cached`] reuses a cached rule only for a spec equal to
//!   the one just read, and compiles — and validates in full, as the operator does — every other.
//!   The cache is rewritten with the new set and fingerprint.
//!
//! So each version of each rule is validated once per node and build, and a rule written to etcd
//! by hand, bypassing the operator, still fails the ADD with an error naming it.
//!
//! The cache is an optimisation only: a cache that cannot be read, was written by another build
//! of the plugin or for another etcd, is corrupt, or is not a regular file owned by this user and
//! writable by it alone, is ignored, and the rules are read and compiled. Failing to write it is
//! logged at debug level. `/run` is a tmpfs: the cache starts empty after a reboot. Revisions
//! must not repeat under the prefix: after restoring etcd from a backup without bumping its
//! revision, delete `<run dir>/rules/` on every node (see `docs/rules.md`, Performance).

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use static_macvlan_allocator::rules::{AllocationRuleSpec, RuleError, RuleSet, RulesFingerprint};
use static_macvlan_allocator::{EtcdConfig, Mirrored};

use crate::plugin::{etcd_scope_text, node_file};

/// Larger files are not read: 100 rules take about 20 KiB.
const MAX_CACHE_BYTES: u64 = 16 << 20;

/// The compiled rules, from the cache alone, if it was written for the rules whose fingerprint
/// etcd now gives (`fp`, from `Allocator::rules_fingerprint`): then it is the set compiling those
/// rules gives. `None` when the cache is missing, unusable or of other rules: the caller reads
/// the rules with their fingerprint and calls [`compile`]. No rules (a count of 0) need no cache.
pub fn cached(run_dir: &Path, etcd: &EtcdConfig, fp: &RulesFingerprint) -> Option<RuleSet> {
    if fp.count == 0 {
        return Some(RuleSet::default());
    }
    let build = build_identity(etcd)?;
    let bytes = read(&cache_path(run_dir, etcd))?;
    let set = RuleSet::from_cache(bytes, &build, fp);
    match &set {
        Some(set) => tracing::debug!(
            reused = set.len(),
            compiled = 0,
            revision = fp.max_mod_revision,
            "rules from the cache, unchanged in etcd"
        ),
        None => tracing::debug!(
            count = fp.count,
            revision = fp.max_mod_revision,
            "rule cache not for the rules in etcd"
        ),
    }
    set
}

/// Compiles `rules` as read from etcd (`etcd` says which) with their fingerprint `fp` (from the
/// same read: `Allocator::rules_with_fingerprint`), reusing and refreshing the cache under
/// `run_dir`.
///
/// # Errors
/// As [`RuleSet::from_mirrored`]: the first invalid rule, by name.
pub fn compile(
    rules: &[Mirrored<AllocationRuleSpec>],
    run_dir: &Path,
    etcd: &EtcdConfig,
    fp: &RulesFingerprint,
) -> Result<RuleSet, RuleError> {
    if rules.is_empty() {
        return RuleSet::from_mirrored(rules);
    }
    let Some(build) = build_identity(etcd) else {
        return RuleSet::from_mirrored(rules);
    };
    let path = cache_path(run_dir, etcd);
    let cached = read(&path);
    let (set, used) = RuleSet::from_mirrored_cached(rules, cached.as_deref(), &build, fp)?;
    tracing::debug!(
        reused = used.reused,
        compiled = used.compiled,
        "compiled rules"
    );
    if !used.up_to_date {
        if let Err(e) = write(&path, &set.to_cache(&build, fp)) {
            tracing::debug!(path = %path.display(), error = %e, "write rule cache");
        }
    }
    Ok(set)
}

/// What the cache is valid for: this executable (its file, so that a rebuilt or upgraded plugin
/// never reads an older one's cache) and the etcd the rules come from. `None` when the
/// executable cannot be identified: then there is no cache.
fn build_identity(etcd: &EtcdConfig) -> Option<String> {
    let exe = fs::metadata("/proc/self/exe").ok()?;
    Some(format!(
        "exe {}:{} size {} mtime {}.{:09}; {}",
        exe.dev(),
        exe.ino(),
        exe.size(),
        exe.mtime(),
        exe.mtime_nsec(),
        etcd_scope_text(etcd)
    ))
}

/// One file per etcd (endpoints and prefix), so that networks on different prefixes do not take
/// turns rewriting one file, while a new build of the plugin replaces its predecessor's. The
/// hash only spreads scopes over file names: the content carries the whole identity, which is
/// what is checked.
fn cache_path(run_dir: &Path, etcd: &EtcdConfig) -> PathBuf {
    node_file(run_dir, "rules", &etcd_scope_text(etcd), "cache")
}

/// The cache's bytes, if it is a regular file of this user that no one else can write.
fn read(path: &Path) -> Option<Vec<u8>> {
    let mut file = File::open(path).ok()?;
    let meta = file.metadata().ok()?;
    let trusted = meta.is_file()
        && meta.uid() == nix::unistd::geteuid().as_raw()
        && meta.mode() & 0o022 == 0
        && meta.len() <= MAX_CACHE_BYTES;
    if !trusted {
        tracing::debug!(path = %path.display(), "ignore rule cache: not a private file of this user");
        return None;
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.read_to_end(&mut bytes).ok()?;
    Some(bytes)
}

/// Replaces the cache atomically: readers see the old file or the new one, never a part.
fn write(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().expect("the cache path has a directory");
    fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".{}.tmp", std::process::id()));
    // A file left by a process of the same pid that died before renaming it: never write
    // through whatever is at that name (it could be a link), replace it.
    let _ = fs::remove_file(&tmp);
    let written = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| f.write_all(bytes))
        .and_then(|()| fs::rename(&tmp, path));
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(name: &str, r#match: &str) -> Mirrored<AllocationRuleSpec> {
        Mirrored {
            name: name.into(),
            uid: None,
            generation: Some(1),
            spec: AllocationRuleSpec {
                r#match: r#match.into(),
                subnet: Some("lan".into()),
                ..AllocationRuleSpec::default()
            },
        }
    }

    fn etcd() -> EtcdConfig {
        EtcdConfig::new(vec!["http://127.0.0.1:2379".into()])
    }

    fn fp(count: i64, max_mod_revision: i64) -> RulesFingerprint {
        RulesFingerprint {
            count,
            max_mod_revision,
        }
    }

    fn cache_file(run_dir: &Path) -> PathBuf {
        cache_path(run_dir, &etcd())
    }

    #[test]
    fn the_second_compile_reads_what_the_first_wrote() {
        let dir = tempfile::tempdir().unwrap();
        let rules = vec![rule("a", "pod.name == 'x'"), rule("b", "true")];
        let build = build_identity(&etcd()).unwrap();
        let first = compile(&rules, dir.path(), &etcd(), &fp(2, 7)).unwrap();
        let path = cache_file(dir.path());
        let written = fs::read(&path).unwrap();
        assert_eq!(written, first.to_cache(&build, &fp(2, 7)));
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o777, 0o600);

        let (_, used) =
            RuleSet::from_mirrored_cached(&rules, read(&path).as_deref(), &build, &fp(2, 7))
                .unwrap();
        assert_eq!((used.reused, used.compiled, used.up_to_date), (2, 0, true));
        // Up to date: not rewritten.
        let before = fs::metadata(&path).unwrap().modified().unwrap();
        compile(&rules, dir.path(), &etcd(), &fp(2, 7)).unwrap();
        assert_eq!(fs::metadata(&path).unwrap().modified().unwrap(), before);
    }

    #[test]
    fn the_whole_set_comes_from_the_cache_for_the_same_fingerprint_only() {
        let dir = tempfile::tempdir().unwrap();
        let rules = vec![rule("a", "pod.name == 'x'"), rule("b", "true")];
        assert!(
            cached(dir.path(), &etcd(), &fp(2, 7)).is_none(),
            "no cache yet"
        );
        let compiled = compile(&rules, dir.path(), &etcd(), &fp(2, 7)).unwrap();
        let set = cached(dir.path(), &etcd(), &fp(2, 7)).expect("the same rules");
        let names = |s: &RuleSet| {
            s.rules()
                .iter()
                .map(|r| r.name().to_owned())
                .collect::<Vec<_>>()
        };
        assert_eq!(names(&set), names(&compiled));
        assert!(cached(dir.path(), &etcd(), &fp(2, 8)).is_none());
        assert!(cached(dir.path(), &etcd(), &fp(1, 7)).is_none());
        let mut other = etcd();
        other.prefix = "/other".into();
        assert!(cached(dir.path(), &other, &fp(2, 7)).is_none());

        // The same specs under a new fingerprint (rewritten with equal values): every rule is
        // reused, and the file is rewritten for the new fingerprint.
        compile(&rules, dir.path(), &etcd(), &fp(2, 9)).unwrap();
        assert!(cached(dir.path(), &etcd(), &fp(2, 7)).is_none());
        assert!(cached(dir.path(), &etcd(), &fp(2, 9)).is_some());

        // A cache others can write is not read.
        let path = cache_file(dir.path());
        fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o620)).unwrap();
        assert!(cached(dir.path(), &etcd(), &fp(2, 9)).is_none());
    }

    #[test]
    fn no_rules_need_no_cache() {
        let dir = tempfile::tempdir().unwrap();
        let set = cached(dir.path(), &etcd(), &RulesFingerprint::EMPTY).unwrap();
        assert!(set.is_empty());
        assert!(!cache_file(dir.path()).exists());
    }

    #[test]
    fn another_etcd_prefix_has_its_own_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut other = etcd();
        other.prefix = "/other".into();
        assert_ne!(
            cache_path(dir.path(), &etcd()),
            cache_path(dir.path(), &other)
        );
        assert_ne!(build_identity(&etcd()), build_identity(&other));
    }

    #[test]
    fn a_cache_others_can_write_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let rules = vec![rule("a", "true")];
        compile(&rules, dir.path(), &etcd(), &fp(1, 3)).unwrap();
        let path = cache_file(dir.path());
        assert!(read(&path).is_some());
        fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o666)).unwrap();
        assert!(read(&path).is_none());
    }

    #[test]
    fn garbage_in_the_cache_is_ignored_and_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let rules = vec![rule("a", "pod.namespace == 'db'")];
        let path = cache_file(dir.path());
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, b"not a cache").unwrap();
        fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        let set = compile(&rules, dir.path(), &etcd(), &fp(1, 3)).unwrap();
        assert_eq!(set.len(), 1);
        assert_eq!(
            fs::read(&path).unwrap(),
            set.to_cache(&build_identity(&etcd()).unwrap(), &fp(1, 3))
        );
    }

    #[test]
    fn an_invalid_rule_fails_naming_it_and_is_not_cached() {
        let dir = tempfile::tempdir().unwrap();
        let good = vec![rule("a", "true")];
        compile(&good, dir.path(), &etcd(), &fp(1, 3)).unwrap();
        let bad = vec![rule("a", "true"), rule("broken", "pod.nmae == 'x'")];
        for _ in 0..2 {
            let e = compile(&bad, dir.path(), &etcd(), &fp(2, 4)).unwrap_err();
            assert_eq!(e.rule(), "broken");
            assert!(matches!(e, RuleError::Invalid { .. }), "{e}");
        }
    }

    #[test]
    fn an_unwritable_run_dir_only_costs_the_cache() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("file");
        fs::write(&file, b"").unwrap();
        // `rules` cannot be created under a regular file.
        let set = compile(&[rule("a", "true")], &file, &etcd(), &fp(1, 3)).unwrap();
        assert_eq!(set.len(), 1);
    }
}
