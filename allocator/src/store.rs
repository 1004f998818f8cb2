//! The allocator proper: reservations in etcd by compare-and-swap.
//!
//! One attachment's reservation is four keys written and deleted together in one transaction —
//! the IP key, the MAC key (when a MAC is reserved), the owner index and the node index — all
//! holding the same JSON [`Record`]. Creation is guarded by `create_revision == 0` on each key, so
//! either all appear or none. Because the four keys are always written together they share one
//! `mod_revision`, which later updates and deletes compare against.
//!
//! Finding a free address never reads a whole pool: a random window of a few dozen addresses is
//! read with point lookups in one transaction, a free one is picked at random and claimed by CAS.
//! At 90 % occupancy a 48-address window still has a free address with probability 1 - 0.9^48.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use backon::{BackoffBuilder, ExponentialBuilder};
use etcd_client::{
    Client, Compare, CompareOp, GetOptions, KeyValue, PutOptions, Txn, TxnOp, TxnOpResponse,
    TxnResponse,
};
use tokio::sync::Mutex;

use crate::addr::{ip_to_u128, MacAddr};
use crate::error::{invalid, Error};
use crate::etcd::EtcdConfig;
use crate::keys::{Keys, SCHEMA_VERSION};
use crate::model::{
    IpRequest, MacPool, MacPoolConfig, MacRequest, Mirrored, Owner, Record, Reservation, State,
    StickyRef, Subnet, SubnetConfig,
};
use crate::window::{hint_opts, Addr, Blocks, Space};

/// Tunables of the allocator. The defaults suit the plugin.
#[derive(Clone, Debug)]
pub struct Options {
    /// Life of a pending reservation's lease: an ADD that dies leaves nothing once it has passed.
    pub pending_ttl: Duration,
    /// Pools with at most this many windows (blocks) are swept completely before reporting
    /// exhaustion.
    pub full_sweep_windows: u32,
    /// Full windows met in a larger pool before its reservations are counted.
    pub sampled_windows: u32,
    /// Compare-and-swap attempts before [`Error::RetriesExhausted`].
    pub max_attempts: u32,
    /// Upper bound on one etcd call, on top of the client's own timeout.
    pub request_timeout: Duration,
    /// A file through which short-lived processes on one host (the plugin's invocations) share
    /// the pending lease, as one long-lived allocator shares it between its reservations: one
    /// grant, a write that etcd syncs to disk, serves every ADD of the next quarter TTL. The
    /// caller names one file per etcd cluster. `None`: the lease lives in this allocator only.
    pub lease_file: Option<PathBuf>,
    /// A file through which short-lived processes on one host share hints: the free addresses
    /// a window read saw besides the one it took, which the next reservations claim without a
    /// read of their own (each hint drawn by one process only, under a lock of the file). The
    /// caller names one file per etcd cluster and prefix. `None`: hints live in this allocator
    /// only.
    pub hints_file: Option<PathBuf>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            pending_ttl: Duration::from_secs(60),
            full_sweep_windows: 64,
            sampled_windows: 8,
            max_attempts: 100,
            request_timeout: Duration::from_secs(6),
            lease_file: None,
            hints_file: None,
        }
    }
}

/// What [`Allocator::release`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Released {
    /// The owner's reservation was deleted.
    Freed(Record),
    /// Nothing is held for that pod UID + ifname.
    NotHeld,
    /// The attachment is held by another container of the same pod UID: nothing was freed.
    Stale(Record),
}

/// A sticky key and how long its address is held after its pod goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StickyHold {
    pub key: String,
    pub hold: Duration,
}

/// How one [`Allocator::try_reserve`] went.
enum Attempt {
    Done(Box<Reservation>),
    /// Lost a race for an address: retry after a backoff.
    Retry,
    /// A hint was stale: retry at once, with a read.
    Again,
}

impl Attempt {
    fn of(claimed: Option<Reservation>) -> Result<Attempt, Error> {
        Ok(match claimed {
            Some(res) => Attempt::Done(Box::new(res)),
            None => Attempt::Retry,
        })
    }
}

/// What [`Allocator::take_held`] found.
enum Taken {
    Done(Box<Reservation>),
    NotHeld,
    Raced,
}

/// Reservation counts of one subnet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Usage {
    /// IP keys of the subnet (pending and committed, static ones outside the ranges included).
    pub used: u128,
    /// Allocatable addresses of the ranges.
    pub capacity: u128,
    /// `capacity - used`, not below zero.
    pub free: u128,
}

/// A lease shared by the pending reservations of one allocator, as etcd's concurrency sessions
/// share one: granted lazily, replaced when too little of its life is left for a commit.
struct PendingLease {
    id: i64,
    granted: Instant,
}

/// The pending lease as shared through [`Options::lease_file`]: its ID, when it was granted
/// (wall clock, as processes share no monotonic clock) and for which TTL.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct SharedLease {
    id: String,
    granted_unix_ms: u64,
    ttl_seconds: u64,
}

impl SharedLease {
    /// The lease in `file`, if it was granted for `ttl` less than a quarter of `ttl` ago. A
    /// missing, unreadable or foreign file, or a clock that went back, means none.
    fn load(file: &Path, ttl: Duration) -> Option<PendingLease> {
        let shared: SharedLease = serde_json::from_slice(&std::fs::read(file).ok()?).ok()?;
        if shared.ttl_seconds != ttl.as_secs() {
            return None;
        }
        let granted = UNIX_EPOCH.checked_add(Duration::from_millis(shared.granted_unix_ms))?;
        let age = SystemTime::now().duration_since(granted).ok()?;
        if age >= ttl / 4 {
            return None;
        }
        Some(PendingLease {
            id: i64::from_str_radix(&shared.id, 16).ok()?,
            granted: Instant::now().checked_sub(age)?,
        })
    }

    /// Publishes a lease granted now: written aside and renamed, so readers see all or nothing.
    fn store(file: &Path, id: i64, ttl: Duration) -> std::io::Result<()> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_err(std::io::Error::other)?;
        let shared = SharedLease {
            id: format!("{id:x}"),
            granted_unix_ms: u64::try_from(now.as_millis()).unwrap_or(u64::MAX),
            ttl_seconds: ttl.as_secs(),
        };
        if let Some(dir) = file.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let aside = file.with_extension(format!("{}.tmp", std::process::id()));
        std::fs::write(
            &aside,
            serde_json::to_vec(&shared).map_err(std::io::Error::other)?,
        )?;
        std::fs::rename(&aside, file).inspect_err(|_| {
            let _ = std::fs::remove_file(&aside);
        })
    }

    /// Removes `file` if it still names lease `id`, which etcd no longer knows.
    fn forget(file: &Path, id: i64) {
        let named = std::fs::read(file)
            .ok()
            .and_then(|b| serde_json::from_slice::<SharedLease>(&b).ok())
            .is_some_and(|s| s.id == format!("{id:x}"));
        if named {
            let _ = std::fs::remove_file(file);
        }
    }
}

/// Free addresses this allocator's window reads saw besides the one they picked, claimed blind
/// by its next reservations: a long-lived allocator (the operator, a benchmark's client) reads
/// one window per several reservations instead of one per reservation, also in a nearly full
/// pool. Only a guess: the claim is still a compare-and-swap, and a stale hint costs one failed
/// transaction and a fresh read, with no backoff. Short-lived processes on one host (the
/// plugin's invocations) share them through [`Options::hints_file`].
#[derive(Default)]
struct Hints {
    inner: std::sync::Mutex<HashMap<HintPool, Vec<Addr>>>,
    file: Option<PathBuf>,
}

/// Which pool a list of hints is of.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum HintPool {
    Subnet(String),
    MacPool(String),
}

impl HintPool {
    /// The name of its list in a hints file.
    fn file_key(&self) -> String {
        match self {
            HintPool::Subnet(s) => format!("subnet/{s}"),
            HintPool::MacPool(p) => format!("macpool/{p}"),
        }
    }

    fn from_file_key(k: &str) -> Option<HintPool> {
        match k.split_once('/')? {
            ("subnet", s) => Some(HintPool::Subnet(s.to_string())),
            ("macpool", p) => Some(HintPool::MacPool(p.to_string())),
            _ => None,
        }
    }
}

/// Hints kept per pool: one window's worth.
const MAX_HINTS: usize = 64;

/// Hints in a file older than this are not used: other hosts' reservations since then make
/// them ever less likely to be free.
const MAX_SHARED_HINT_AGE: Duration = Duration::from_secs(30);

/// The hints as kept in [`Options::hints_file`]: per pool, when its window was read and what
/// was left of it.
#[derive(Default, serde::Serialize, serde::Deserialize)]
struct SharedHints {
    pools: std::collections::BTreeMap<String, SharedList>,
}

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct SharedList {
    read_unix_ms: u64,
    addrs: Vec<String>,
}

fn unix_ms_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

impl SharedHints {
    /// The fresh lists of a file's content; anything that does not parse counts as no hints.
    fn parse(bytes: &[u8]) -> HashMap<HintPool, (u64, Vec<Addr>)> {
        let now = unix_ms_now();
        let max_age = MAX_SHARED_HINT_AGE.as_millis() as u64;
        let shared: SharedHints = serde_json::from_slice(bytes).unwrap_or_default();
        shared
            .pools
            .into_iter()
            .filter(|(_, l)| l.read_unix_ms <= now && now - l.read_unix_ms < max_age)
            .filter_map(|(k, l)| {
                let pool = HintPool::from_file_key(&k)?;
                let addrs = l
                    .addrs
                    .iter()
                    .filter_map(|a| match pool {
                        HintPool::Subnet(_) => a.parse().ok().map(Addr::Ip),
                        HintPool::MacPool(_) => a.parse().ok().map(Addr::Mac),
                    })
                    .collect();
                Some((pool, (l.read_unix_ms, addrs)))
            })
            .collect()
    }

    fn render(lists: &HashMap<HintPool, (u64, Vec<Addr>)>) -> Vec<u8> {
        let pools = lists
            .iter()
            .filter(|(_, (_, addrs))| !addrs.is_empty())
            .map(|(pool, (read, addrs))| {
                let addrs = addrs
                    .iter()
                    .map(|a| match a {
                        Addr::Ip(ip) => ip.to_string(),
                        Addr::Mac(m) => m.to_string(),
                    })
                    .collect();
                let list = SharedList {
                    read_unix_ms: *read,
                    addrs,
                };
                (pool.file_key(), list)
            })
            .collect();
        serde_json::to_vec(&SharedHints { pools }).expect("hints serialize")
    }
}

impl Hints {
    fn new(file: Option<PathBuf>) -> Hints {
        Hints {
            inner: Default::default(),
            file,
        }
    }

    /// Runs `f` on the lists: this allocator's own, or with a hints file, the file's, under an
    /// exclusive lock of it so that no two processes draw the same hint. A file that cannot be
    /// used is no worse than no hints: `f` then runs on an empty set, and nothing is kept.
    fn edit<R>(&self, f: impl FnOnce(&mut HashMap<HintPool, Vec<Addr>>) -> R) -> R {
        // Plain data: a panic elsewhere cannot leave it inconsistent.
        let mut mine = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let Some(path) = &self.file else {
            return f(&mut mine);
        };
        let opened = (|| {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(path)?;
            file.lock()?;
            Ok::<_, std::io::Error>(file)
        })();
        let mut file = match opened {
            Ok(f) => f,
            Err(e) => {
                tracing::debug!(file = %path.display(), error = %e, "cannot share hints");
                return f(&mut HashMap::new());
            }
        };
        use std::io::{Read, Seek, Write};
        let mut bytes = Vec::new();
        let _ = file.read_to_end(&mut bytes);
        let mut stamped = SharedHints::parse(&bytes);
        let mut lists: HashMap<HintPool, Vec<Addr>> = stamped
            .iter()
            .map(|(p, (_, a))| (p.clone(), a.clone()))
            .collect();
        let before = lists.clone();
        let out = f(&mut lists);
        if lists != before {
            let now = unix_ms_now();
            stamped.retain(|p, _| lists.contains_key(p));
            for (pool, addrs) in lists {
                // A list that only shrank keeps the time of its read; a new one is read now.
                let read = match (stamped.get(&pool), before.get(&pool)) {
                    (Some((t, _)), Some(old)) if addrs.iter().all(|a| old.contains(a)) => *t,
                    _ => now,
                };
                stamped.insert(pool, (read, addrs));
            }
            let written = file
                .set_len(0)
                .and_then(|()| file.rewind())
                .and_then(|()| file.write_all(&SharedHints::render(&stamped)));
            if let Err(e) = written {
                tracing::debug!(file = %path.display(), error = %e, "cannot share hints");
            }
        }
        out
    }

    /// Blind choices for a request with at least one automatic part and a hint for each, still
    /// inside the current pools. Takes nothing when a part lacks one.
    fn take(
        &self,
        subnet: &Subnet,
        ip_req: IpRequest,
        mac_req: &MacRequest,
    ) -> Option<(IpAddr, Option<MacAddr>)> {
        let automatic = matches!(ip_req, IpRequest::Auto) || matches!(mac_req, MacRequest::Auto(_));
        if !automatic {
            return None;
        }
        self.edit(|lists| {
            let mut pop = |pool: HintPool, fits: &dyn Fn(&Addr) -> bool| {
                let list = lists.get_mut(&pool)?;
                std::iter::from_fn(|| list.pop()).find(|a| fits(a))
            };
            let ip = match ip_req {
                IpRequest::Static(a) => a,
                IpRequest::Auto => {
                    let fits = |a: &Addr| {
                        matches!(a, Addr::Ip(ip) if ip.is_ipv4() == subnet.cidr.is_ipv4()
                            && subnet.pool().contains(ip_to_u128(*ip)))
                    };
                    match pop(HintPool::Subnet(subnet.name.clone()), &fits)? {
                        Addr::Ip(ip) => ip,
                        Addr::Mac(_) => unreachable!("only IPs fit"),
                    }
                }
            };
            let mac = match mac_req {
                MacRequest::None => None,
                MacRequest::Static(m) => Some(*m),
                MacRequest::Auto(pool) => {
                    let fits = |a: &Addr| {
                        matches!(a, Addr::Mac(m) if pool.set().contains(u128::from(m.to_u64())))
                    };
                    match pop(HintPool::MacPool(pool.name.clone()), &fits) {
                        Some(Addr::Mac(m)) => Some(m),
                        Some(Addr::Ip(_)) => unreachable!("only MACs fit"),
                        None => {
                            if let IpRequest::Auto = ip_req {
                                lists
                                    .entry(HintPool::Subnet(subnet.name.clone()))
                                    .or_default()
                                    .push(Addr::Ip(ip));
                            }
                            return None;
                        }
                    }
                }
            };
            Some((ip, mac))
        })
    }

    /// The pick of a window read of `pool` (the first of `free`); the rest become its hints.
    fn pick(&self, pool: HintPool, mut free: Vec<Addr>) -> Option<Addr> {
        if free.is_empty() {
            return None;
        }
        let first = free.remove(0);
        free.truncate(MAX_HINTS);
        self.edit(|lists| lists.insert(pool, free));
        Some(first)
    }

    /// Drops the hints a failed blind claim drew from: their window is out of date.
    fn forget(&self, subnet: &Subnet, mac_req: &MacRequest) {
        self.edit(|lists| {
            lists.remove(&HintPool::Subnet(subnet.name.clone()));
            if let MacRequest::Auto(pool) = mac_req {
                lists.remove(&HintPool::MacPool(pool.name.clone()));
            }
        });
    }
}

/// A subnet's and its MAC pool's values as stored in etcd, with the revisions they were last
/// written at: what a caller keeps to decode them again without a read
/// ([`Allocator::decode_subnet`]) and to claim against exactly that configuration
/// ([`Allocator::claim_early`]).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredSubnet {
    pub name: String,
    /// The subnet key's mod revision.
    pub revision: i64,
    /// The stored JSON (a mirrored VlanSubnet spec).
    #[serde(with = "json_text")]
    pub value: Vec<u8>,
    pub pool: Option<StoredPool>,
}

/// The MAC pool part of a [`StoredSubnet`].
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredPool {
    pub revision: i64,
    #[serde(with = "json_text")]
    pub value: Vec<u8>,
}

/// Stored values are JSON text: kept as a string, not as an array of numbers.
mod json_text {
    pub fn serialize<S: serde::Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&String::from_utf8_lossy(v))
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        <String as serde::Deserialize>::deserialize(d).map(String::into_bytes)
    }
}

/// A subnet and its MAC pool, validated, with what they were decoded from.
#[derive(Clone, Debug)]
pub struct LoadedSubnet {
    pub subnet: Subnet,
    pub pool: Option<MacPool>,
    pub stored: StoredSubnet,
}

/// The MAC pool a stored subnet names, if its value says (decoded for that field only).
fn subnet_pool_name(kv: &KeyValue) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Spec {
        #[serde(rename = "macPool")]
        mac_pool: Option<String>,
    }
    #[derive(serde::Deserialize)]
    struct Partial {
        spec: Spec,
    }
    serde_json::from_slice::<Partial>(kv.value())
        .ok()?
        .spec
        .mac_pool
        .filter(|p| !p.is_empty())
}

/// Handle to the reservations under one prefix. Cheap to clone; clones share the connection and
/// the pending lease.
#[derive(Clone)]
pub struct Allocator {
    client: Client,
    keys: Keys,
    opts: Options,
    lease: Arc<Mutex<Option<PendingLease>>>,
    hints: Arc<Hints>,
}

/// What a reservation asks for, checked before anything is read or written: the owner, the
/// sticky key, a static IP against the subnet, a static MAC for being unicast.
fn check_request(
    subnet: &Subnet,
    owner: &Owner,
    ip: IpRequest,
    mac: &MacRequest,
    sticky: Option<&StickyHold>,
) -> Result<(), Error> {
    owner.validate()?;
    if let Some(s) = sticky {
        if s.key.is_empty() || s.key.len() > 512 {
            return Err(invalid("sticky.key", &s.key, "must be 1 to 512 bytes"));
        }
    }
    if let IpRequest::Static(addr) = ip {
        subnet.check_static(addr)?;
    }
    if let MacRequest::Static(m) = mac {
        if m.is_multicast() || m.is_zero() {
            return Err(invalid("mac", m, "is not a unicast address"));
        }
    }
    Ok(())
}

/// One of a transaction's responses as a get response's key-values.
fn kvs_of(resp: &TxnOpResponse) -> &[KeyValue] {
    match resp {
        TxnOpResponse::Get(g) => g.kvs(),
        _ => &[],
    }
}

fn decode<T: serde::de::DeserializeOwned>(kv: &KeyValue) -> Result<T, Error> {
    serde_json::from_slice(kv.value()).map_err(|e| Error::Corrupt {
        key: String::from_utf8_lossy(kv.key()).into_owned(),
        reason: format!("value does not decode: {e}"),
    })
}

/// RFC 3339 UTC timestamp, seconds precision (civil-from-days, proleptic Gregorian).
pub(crate) fn rfc3339_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

impl Allocator {
    /// An allocator over an existing client.
    pub fn new(client: Client, keys: Keys, opts: Options) -> Self {
        Allocator {
            client,
            keys,
            lease: Arc::new(Mutex::new(None)),
            hints: Arc::new(Hints::new(opts.hints_file.clone())),
            opts,
        }
    }

    /// Validates `cfg`, connects (lazily) and returns an allocator under `cfg.prefix`.
    ///
    /// # Errors
    /// [`Error::Invalid`] naming the `etcd.*` field at fault.
    pub async fn connect(cfg: &EtcdConfig, mut opts: Options) -> Result<Self, Error> {
        let (client, keys) = cfg.connect().await?;
        opts.request_timeout = cfg.request_timeout() + Duration::from_millis(500);
        Ok(Self::new(client, keys, opts))
    }

    /// The key builder in use.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// The underlying etcd client (a cheap clone).
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// The options in force.
    pub fn options(&self) -> &Options {
        &self.opts
    }

    async fn txn(&self, op: &str, txn: Txn) -> Result<TxnResponse, Error> {
        let mut kv = self.client.kv_client();
        match tokio::time::timeout(self.opts.request_timeout, kv.txn(txn)).await {
            Ok(r) => r.map_err(|e| Error::etcd(op, e)),
            Err(_) => Err(Error::Unavailable {
                op: op.to_string(),
                source: etcd_client::Error::IoError(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no answer within {:?}", self.opts.request_timeout),
                )),
            }),
        }
    }

    async fn get(
        &self,
        op: &str,
        key: String,
        opts: Option<GetOptions>,
    ) -> Result<Vec<KeyValue>, Error> {
        let resp = self
            .txn(op, Txn::new().and_then(vec![TxnOp::get(key, opts)]))
            .await?;
        Ok(resp
            .op_responses()
            .first()
            .map(|r| kvs_of(r).to_vec())
            .unwrap_or_default())
    }

    /// Creates the schema key if absent, and checks it otherwise.
    ///
    /// # Errors
    /// [`Error::SchemaMismatch`] when another version's data is under the prefix.
    pub async fn ensure_schema(&self) -> Result<(), Error> {
        let key = self.keys.schema();
        let txn = Txn::new()
            .when(vec![Compare::create_revision(
                key.clone(),
                CompareOp::Equal,
                0,
            )])
            .and_then(vec![TxnOp::put(key.clone(), SCHEMA_VERSION, None)])
            .or_else(vec![TxnOp::get(key, None)]);
        let resp = self.txn("ensure schema", txn).await?;
        if resp.succeeded() {
            return Ok(());
        }
        self.check_schema_value(resp.op_responses().first().map(kvs_of).unwrap_or(&[]))
    }

    /// Checks that etcd answers and the schema key is one this code knows (the plugin's STATUS).
    ///
    /// # Errors
    /// [`Error::Unavailable`] when etcd does not answer; [`Error::SchemaMismatch`] when the key is
    /// missing or of another version.
    pub async fn check_schema(&self) -> Result<(), Error> {
        let kvs = self.get("read schema", self.keys.schema(), None).await?;
        self.check_schema_value(&kvs)
    }

    fn check_schema_value(&self, kvs: &[KeyValue]) -> Result<(), Error> {
        let found = kvs
            .first()
            .map(|kv| String::from_utf8_lossy(kv.value()).into_owned())
            .unwrap_or_default();
        if found == SCHEMA_VERSION {
            Ok(())
        } else {
            Err(Error::SchemaMismatch {
                prefix: self.keys.prefix().to_string(),
                found,
                expected: SCHEMA_VERSION.to_string(),
            })
        }
    }

    /// Validates and writes a subnet config (with the schema key, in one transaction).
    ///
    /// # Errors
    /// [`Error::Invalid`] naming the field; nothing is written then.
    pub async fn put_subnet(&self, m: &Mirrored<SubnetConfig>) -> Result<Subnet, Error> {
        let subnet = Subnet::from_config(&m.name, &m.spec)?;
        self.put_config("write subnet", self.keys.subnet(&m.name), m)
            .await?;
        Ok(subnet)
    }

    /// Validates and writes a MAC pool config.
    ///
    /// # Errors
    /// [`Error::Invalid`] naming the field; nothing is written then.
    pub async fn put_macpool(&self, m: &Mirrored<MacPoolConfig>) -> Result<MacPool, Error> {
        let pool = MacPool::from_config(&m.name, &m.spec)?;
        self.put_config("write mac pool", self.keys.macpool(&m.name), m)
            .await?;
        Ok(pool)
    }

    async fn put_config<T: serde::Serialize>(
        &self,
        op: &str,
        key: String,
        v: &T,
    ) -> Result<(), Error> {
        let json = serde_json::to_string(v).expect("config serializes");
        let schema = self.keys.schema();
        let txn = Txn::new()
            .when(vec![Compare::create_revision(
                schema.clone(),
                CompareOp::Equal,
                0,
            )])
            .and_then(vec![
                TxnOp::put(schema, SCHEMA_VERSION, None),
                TxnOp::put(key.clone(), json.clone(), None),
            ])
            .or_else(vec![TxnOp::put(key, json, None)]);
        self.txn(op, txn).await.map(|_| ())
    }

    /// Reads and validates a subnet.
    ///
    /// # Errors
    /// [`Error::SubnetNotFound`]; [`Error::Corrupt`] when the stored config does not validate.
    pub async fn get_subnet(&self, name: &str) -> Result<Subnet, Error> {
        let key = self.keys.subnet(name);
        let kvs = self
            .get(&format!("read subnet {name}"), key.clone(), None)
            .await?;
        let kv = kvs
            .first()
            .ok_or_else(|| Error::SubnetNotFound(name.to_string(), key.clone()))?;
        let m: Mirrored<SubnetConfig> = decode(kv)?;
        Subnet::from_config(name, &m.spec).map_err(|e| Error::Corrupt {
            key,
            reason: e.to_string(),
        })
    }

    /// Reads and validates a MAC pool.
    ///
    /// # Errors
    /// [`Error::MacPoolNotFound`]; [`Error::Corrupt`] when the stored config does not validate.
    pub async fn get_macpool(&self, name: &str) -> Result<MacPool, Error> {
        let key = self.keys.macpool(name);
        let kvs = self
            .get(&format!("read mac pool {name}"), key.clone(), None)
            .await?;
        let kv = kvs
            .first()
            .ok_or_else(|| Error::MacPoolNotFound(name.to_string(), key.clone()))?;
        let m: Mirrored<MacPoolConfig> = decode(kv)?;
        MacPool::from_config(name, &m.spec).map_err(|e| Error::Corrupt {
            key,
            reason: e.to_string(),
        })
    }

    /// Reads a subnet and, in the same transaction, the MAC pools, returning the subnet's own
    /// pool when it names one: the configuration an ADD needs, in one round trip.
    ///
    /// # Errors
    /// [`Error::SubnetNotFound`], [`Error::MacPoolNotFound`] (the subnet names a pool that is not
    /// configured), [`Error::Corrupt`], [`Error::Unavailable`].
    pub async fn load_subnet(&self, name: &str) -> Result<(Subnet, Option<MacPool>), Error> {
        self.load_subnet_at(name).await.map(|l| (l.subnet, l.pool))
    }

    /// As [`Allocator::load_subnet`], with the revisions and the stored values of what was
    /// read, for a caller that keeps the configuration (see [`Allocator::claim_early`]).
    ///
    /// # Errors
    /// As [`Allocator::load_subnet`].
    pub async fn load_subnet_at(&self, name: &str) -> Result<LoadedSubnet, Error> {
        let key = self.keys.subnet(name);
        let txn = Txn::new().and_then(vec![
            TxnOp::get(key.clone(), None),
            TxnOp::get(self.keys.macpools(), Some(GetOptions::new().with_prefix())),
        ]);
        let resp = self
            .txn(&format!("read subnet {name}"), txn)
            .await?
            .op_responses();
        let kv = kvs_of(&resp[0])
            .first()
            .ok_or_else(|| Error::SubnetNotFound(name.to_string(), key.clone()))?;
        // A pool the subnet names but etcd lacks is reported by decode_subnet, after the
        // subnet itself is validated.
        let pool_kv = subnet_pool_name(kv).and_then(|pool_name| {
            let pool_key = self.keys.macpool(&pool_name);
            kvs_of(&resp[1])
                .iter()
                .find(|kv| kv.key() == pool_key.as_bytes())
        });
        let stored = StoredSubnet {
            name: name.to_string(),
            revision: kv.mod_revision(),
            value: kv.value().to_vec(),
            pool: pool_kv.map(|p| StoredPool {
                revision: p.mod_revision(),
                value: p.value().to_vec(),
            }),
        };
        self.decode_subnet(stored)
    }

    /// Decodes a subnet (and its MAC pool) as stored, e.g. kept by the caller from an earlier
    /// [`Allocator::load_subnet_at`].
    ///
    /// # Errors
    /// [`Error::Corrupt`] naming the key; [`Error::MacPoolNotFound`] when the subnet names a
    /// pool that `stored` lacks.
    pub fn decode_subnet(&self, stored: StoredSubnet) -> Result<LoadedSubnet, Error> {
        let key = self.keys.subnet(&stored.name);
        let corrupt = |key: &str, reason: String| Error::Corrupt {
            key: key.to_string(),
            reason,
        };
        let m: Mirrored<SubnetConfig> = serde_json::from_slice(&stored.value)
            .map_err(|e| corrupt(&key, format!("value does not decode: {e}")))?;
        let subnet =
            Subnet::from_config(&stored.name, &m.spec).map_err(|e| corrupt(&key, e.to_string()))?;
        let pool = match (&subnet.mac_pool, &stored.pool) {
            (None, _) => None,
            (Some(pool_name), None) => {
                return Err(Error::MacPoolNotFound(
                    pool_name.clone(),
                    self.keys.macpool(pool_name),
                ))
            }
            (Some(pool_name), Some(p)) => {
                let pool_key = self.keys.macpool(pool_name);
                let m: Mirrored<MacPoolConfig> = serde_json::from_slice(&p.value)
                    .map_err(|e| corrupt(&pool_key, format!("value does not decode: {e}")))?;
                Some(
                    MacPool::from_config(pool_name, &m.spec)
                        .map_err(|e| corrupt(&pool_key, e.to_string()))?,
                )
            }
        };
        Ok(LoadedSubnet {
            subnet,
            pool,
            stored,
        })
    }

    /// Grants the pending lease now (or checks the cached one is fresh), so that a caller can
    /// overlap the grant with its own reads; [`Allocator::reserve`] then reuses it.
    ///
    /// # Errors
    /// [`Error::Unavailable`].
    pub async fn prepare(&self) -> Result<(), Error> {
        self.pending_lease().await.map(|_| ())
    }

    /// The lease pending reservations are written under: reused while at least three quarters of
    /// its life remain, so every pending reservation has that long to be committed.
    async fn pending_lease(&self) -> Result<i64, Error> {
        let mut slot = self.lease.lock().await;
        if let Some(l) = slot.as_ref() {
            if l.granted.elapsed() < self.opts.pending_ttl / 4 {
                return Ok(l.id);
            }
        }
        if let Some(l) = self
            .opts
            .lease_file
            .as_deref()
            .and_then(|f| SharedLease::load(f, self.opts.pending_ttl))
        {
            let id = l.id;
            *slot = Some(l);
            return Ok(id);
        }
        let ttl = self.opts.pending_ttl.as_secs().max(1) as i64;
        let mut lc = self.client.lease_client();
        let op = "grant pending lease";
        let resp = tokio::time::timeout(self.opts.request_timeout, lc.grant(ttl, None))
            .await
            .map_err(|_| Error::Unavailable {
                op: op.into(),
                source: etcd_client::Error::IoError(std::io::ErrorKind::TimedOut.into()),
            })?
            .map_err(|e| Error::etcd(op, e))?;
        *slot = Some(PendingLease {
            id: resp.id(),
            granted: Instant::now(),
        });
        if let Some(f) = &self.opts.lease_file {
            if let Err(e) = SharedLease::store(f, resp.id(), self.opts.pending_ttl) {
                tracing::debug!(file = %f.display(), error = %e, "cannot share the pending lease");
            }
        }
        Ok(resp.id())
    }

    /// The keys of a record, in a fixed order: IP, owner, node, MAC (if any), sticky (if any).
    /// A held record has no owner and node keys: no pod owns it.
    fn record_keys(&self, r: &Record) -> Vec<String> {
        let o = &r.owner;
        let mut keys = vec![self.keys.ip(&r.subnet, r.ip)];
        if r.state != State::Held {
            keys.push(self.keys.owner(&o.pod_uid, &o.ifname));
            keys.push(self.keys.node(&o.node, &o.pod_uid, &o.ifname));
        }
        if let Some(mac) = r.mac {
            keys.push(self.keys.mac(mac));
        }
        if let Some(s) = &r.sticky {
            keys.push(self.keys.sticky(&r.subnet, &s.key));
        }
        keys
    }

    fn put_record_ops(&self, r: &Record, lease: Option<i64>) -> Vec<TxnOp> {
        let json = serde_json::to_string(r).expect("record serializes");
        let opts = lease.map(|id| PutOptions::new().with_lease(id));
        self.record_keys(r)
            .into_iter()
            .map(|k| TxnOp::put(k, json.clone(), opts.clone()))
            .collect()
    }

    fn unchanged(&self, res: &Reservation) -> Vec<Compare> {
        self.record_keys(&res.record)
            .into_iter()
            .map(|k| Compare::mod_revision(k, CompareOp::Equal, res.revision))
            .collect()
    }

    /// Reserves an IP (and a MAC, unless `mac` is [`MacRequest::None`]) for `owner` in `subnet`,
    /// pending under a lease of `pending_ttl` until [`Allocator::commit`].
    ///
    /// Guarantees: the IP, MAC, owner and node keys are created together or not at all, each only
    /// if absent, so no address is ever held twice. Repeating the call for the same owner returns
    /// the same reservation; the same pod UID and ifname from a new container takes the
    /// reservation over (the old container's DEL then frees nothing).
    ///
    /// # Errors
    /// [`Error::Invalid`] / [`Error::OutsideSubnet`] for bad input (nothing written);
    /// [`Error::IpTaken`] / [`Error::MacTaken`] naming the holder of a static request;
    /// [`Error::PoolExhausted`] / [`Error::MacPoolExhausted`];
    /// [`Error::AttachmentConflict`] when the attachment holds something else;
    /// [`Error::Unavailable`] / [`Error::RetriesExhausted`] (retryable).
    pub async fn reserve(
        &self,
        subnet: &Subnet,
        owner: &Owner,
        ip: IpRequest,
        mac: &MacRequest,
    ) -> Result<Reservation, Error> {
        self.reserve_sticky(subnet, owner, ip, mac, None).await
    }

    /// As [`Allocator::reserve`], for a reservation that follows a sticky key: if the key's
    /// address is held (its previous pod is gone and the hold has not expired), `owner` takes it
    /// over, IP and MAC unchanged; otherwise a new reservation is made and bound to the key.
    /// When its pod releases it, it is held for `hold` instead of freed.
    ///
    /// # Errors
    /// As [`Allocator::reserve`]; [`Error::StickyInUse`] (retryable) while another pod UID still
    /// holds the key's address; [`Error::AttachmentConflict`] when a static request differs from
    /// the held address.
    pub async fn reserve_sticky(
        &self,
        subnet: &Subnet,
        owner: &Owner,
        ip: IpRequest,
        mac: &MacRequest,
        sticky: Option<&StickyHold>,
    ) -> Result<Reservation, Error> {
        check_request(subnet, owner, ip, mac, sticky)?;
        let op = format!("reserve ip in subnet {} for {owner}", subnet.name);
        let mut delays = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(2))
            .with_max_delay(Duration::from_millis(100))
            .with_factor(1.6)
            .with_jitter()
            .without_max_times()
            .build();
        for _ in 0..self.opts.max_attempts {
            if let Some(s) = sticky {
                match self.take_held(subnet, owner, ip, mac, s).await? {
                    Taken::Done(res) => return Ok(*res),
                    Taken::Raced => {
                        tokio::time::sleep(delays.next().unwrap_or(Duration::from_millis(100)))
                            .await;
                        continue;
                    }
                    Taken::NotHeld => {}
                }
            }
            match self.try_reserve(subnet, owner, ip, mac, sticky).await? {
                Attempt::Done(res) => return Ok(*res),
                Attempt::Again => {}
                Attempt::Retry => {
                    let d = delays.next().unwrap_or(Duration::from_millis(100));
                    tokio::time::sleep(d).await;
                }
            }
        }
        Err(Error::RetriesExhausted {
            op,
            attempts: self.opts.max_attempts,
        })
    }

    /// Takes over the address held for `sticky` in `subnet`, if there is one.
    async fn take_held(
        &self,
        subnet: &Subnet,
        owner: &Owner,
        ip_req: IpRequest,
        mac_req: &MacRequest,
        sticky: &StickyHold,
    ) -> Result<Taken, Error> {
        let key = self.keys.sticky(&subnet.name, &sticky.key);
        let read_op = format!("read sticky key {}", sticky.key);
        let (lease, kvs) = tokio::join!(self.pending_lease(), self.get(&read_op, key, None));
        let Some(kv) = kvs?.into_iter().next() else {
            return Ok(Taken::NotHeld);
        };
        let held = Reservation {
            record: decode(&kv)?,
            revision: kv.mod_revision(),
        };
        let rec = &held.record;
        if rec.state != State::Held {
            if rec.owner.pod_uid == owner.pod_uid {
                // Bound to this very pod: the ordinary path finds it through the owner index.
                return Ok(Taken::NotHeld);
            }
            return Err(Error::StickyInUse {
                key: sticky.key.clone(),
                holder: Box::new(rec.owner.clone()),
            });
        }
        let mismatch = match (ip_req, mac_req) {
            (IpRequest::Static(a), _) if a != rec.ip => Some(format!("ip {a}")),
            (_, MacRequest::Static(m)) if Some(*m) != rec.mac => Some(format!("mac {m}")),
            _ => None,
        };
        if let Some(requested) = mismatch {
            return Err(Error::AttachmentConflict {
                owner: Box::new(owner.clone()),
                held: format!("ip {} held for sticky key {}", rec.ip, sticky.key),
                requested,
            });
        }
        let lease = lease?;
        let mut record = rec.clone();
        record.owner = owner.clone();
        record.state = State::Pending;
        record.since = rfc3339_now();
        record.lease = Some(format!("{lease:x}"));
        record.sticky = Some(StickyRef {
            key: sticky.key.clone(),
            hold_seconds: sticky.hold.as_secs(),
        });
        let mut compares = self.unchanged(&held);
        let o = &owner;
        for k in [
            self.keys.owner(&o.pod_uid, &o.ifname),
            self.keys.node(&o.node, &o.pod_uid, &o.ifname),
        ] {
            compares.push(Compare::create_revision(k, CompareOp::Equal, 0));
        }
        compares.push(Compare::create_revision(
            self.keys.subnet(&subnet.name),
            CompareOp::Greater,
            0,
        ));
        let txn = Txn::new()
            .when(compares)
            .and_then(self.put_record_ops(&record, Some(lease)));
        let op = format!("take over ip {} held for sticky key {}", rec.ip, sticky.key);
        let resp = self.txn(&op, txn).await?;
        if !resp.succeeded() {
            return Ok(Taken::Raced);
        }
        let revision = resp.header().map(|h| h.revision()).unwrap_or_default();
        tracing::debug!(ip = %record.ip, key = %sticky.key, "took over held sticky reservation");
        Ok(Taken::Done(Box::new(Reservation { record, revision })))
    }

    /// Claims for `owner`, pending, before the caller has read anything: against a subnet
    /// configuration it kept from an earlier read ([`Allocator::load_subnet_at`]), with static
    /// requests as they are and automatic ones from hints (see [`Options::hints_file`]). One
    /// transaction, which writes only if every key is free and the subnet and its MAC pool are
    /// still at the kept revisions, so a claim made this way is one [`Allocator::reserve`] could
    /// have made. `Ok(None)`: nothing was claimed (no hint, an address or the attachment taken,
    /// the configuration changed, a request invalid): the caller reserves the ordinary way,
    /// which then reports whatever was in the way. A claim the caller does not keep is given
    /// back with [`Allocator::release_exact`].
    ///
    /// # Errors
    /// [`Error::Unavailable`]; the claim may then have been made, pending, and a following
    /// [`Allocator::reserve`] for the same owner and container hands it back.
    pub async fn claim_early(
        &self,
        kept: &LoadedSubnet,
        owner: &Owner,
        ip_req: IpRequest,
        mac_req: &MacRequest,
    ) -> Result<Option<Reservation>, Error> {
        let subnet = &kept.subnet;
        if check_request(subnet, owner, ip_req, mac_req, None).is_err() {
            return Ok(None);
        }
        let automatic = matches!(ip_req, IpRequest::Auto) || matches!(mac_req, MacRequest::Auto(_));
        let (ip, mac) = match (ip_req, mac_req) {
            (IpRequest::Static(a), MacRequest::Static(m)) => (a, Some(*m)),
            (IpRequest::Static(a), MacRequest::None) => (a, None),
            _ => match self.hints.take(subnet, ip_req, mac_req) {
                Some(choice) => choice,
                None => return Ok(None),
            },
        };
        let lease = self.pending_lease().await?;
        let claimed = self
            .claim(
                subnet,
                owner,
                ip_req,
                mac_req,
                None,
                lease,
                ip,
                mac,
                Some(&kept.stored),
            )
            .await?;
        if claimed.is_none() && automatic {
            self.hints.forget(subnet, mac_req);
        }
        Ok(claimed)
    }

    /// One attempt: `Ok(None)` means a lost race worth retrying.
    async fn try_reserve(
        &self,
        subnet: &Subnet,
        owner: &Owner,
        ip_req: IpRequest,
        mac_req: &MacRequest,
        sticky: Option<&StickyHold>,
    ) -> Result<Attempt, Error> {
        // Free addresses a previous read of this allocator saw: claimed blind, without a read.
        if let Some((ip, mac)) = self.hints.take(subnet, ip_req, mac_req) {
            let lease = self.pending_lease().await?;
            return match self
                .claim(subnet, owner, ip_req, mac_req, sticky, lease, ip, mac, None)
                .await?
            {
                Some(res) => Ok(Attempt::Done(Box::new(res))),
                None => {
                    // Taken since (or our own earlier reservation): read afresh, at once.
                    self.hints.forget(subnet, mac_req);
                    Ok(Attempt::Again)
                }
            };
        }
        let owner_key = self.keys.owner(&owner.pod_uid, &owner.ifname);
        let ip_space = Space::Ip {
            subnet: &subnet.name,
            like: subnet.cidr.ip(),
        };
        let mut ip_blocks = Blocks::new(subnet.pool(), ip_space);
        let mut mac_blocks = match mac_req {
            MacRequest::Auto(pool) => Some(Blocks::new(pool.set(), Space::Mac)),
            _ => None,
        };

        // First read, in one transaction: the owner index (idempotency), then for the IP and
        // the MAC either the static key (with its value, to name a holder) or one window; the
        // pending lease is granted (or reused) concurrently.
        let mut ops = vec![TxnOp::get(owner_key, Some(hint_opts(false)))];
        let ip_window = match ip_req {
            IpRequest::Static(a) => {
                ops.push(TxnOp::get(
                    self.keys.ip(&subnet.name, a),
                    Some(hint_opts(false)),
                ));
                None
            }
            IpRequest::Auto => ip_blocks
                .advance()
                .map(|b| ip_blocks.window(&self.keys, subnet.pool(), ip_space, b)),
        };
        if let Some(w) = &ip_window {
            ops.extend(w.ops());
        }
        let ip_ops_end = ops.len();
        let mac_window = match mac_req {
            MacRequest::None => None,
            MacRequest::Static(m) => {
                ops.push(TxnOp::get(self.keys.mac(*m), Some(hint_opts(false))));
                None
            }
            MacRequest::Auto(pool) => {
                let blocks = mac_blocks.as_mut().expect("auto mac has blocks");
                blocks
                    .advance()
                    .map(|b| blocks.window(&self.keys, pool.set(), Space::Mac, b))
            }
        };
        if let Some(w) = &mac_window {
            ops.extend(w.ops());
        }
        let read_op = format!("read candidates in subnet {}", subnet.name);
        let (lease, resp) = tokio::join!(
            self.pending_lease(),
            self.txn(&read_op, Txn::new().and_then(ops))
        );
        let resp = resp?.op_responses();
        if let Some(kv) = kvs_of(&resp[0]).first() {
            return Attempt::of(
                self.existing_attachment(subnet, owner, ip_req, mac_req, kv)
                    .await?,
            );
        }
        let lease = lease?;
        let (ip_resp, mac_resp) = (&resp[1..ip_ops_end], &resp[ip_ops_end..]);

        let ip = match ip_req {
            IpRequest::Static(a) => {
                if let Some(kv) = kvs_of(&ip_resp[0]).first() {
                    let holder: Record = decode(kv)?;
                    return Err(Error::IpTaken {
                        subnet: subnet.name.clone(),
                        ip: a,
                        holder: Box::new(holder.owner),
                    });
                }
                a
            }
            IpRequest::Auto => {
                let mut found = ip_window.as_ref().and_then(|w| {
                    self.hints
                        .pick(HintPool::Subnet(subnet.name.clone()), w.free(ip_resp))
                });
                let mut full = u32::from(ip_window.is_some() && found.is_none());
                while found.is_none() {
                    if full == self.opts.sampled_windows
                        && ip_blocks.total > u128::from(self.opts.full_sweep_windows)
                    {
                        // A large pool whose sampled windows were all full: count rather than sweep.
                        let usage = self.usage(subnet).await?;
                        if usage.free == 0 {
                            return Err(self.exhausted(subnet, usage));
                        }
                    }
                    let Some(b) = ip_blocks.advance() else {
                        let usage = self.usage(subnet).await?;
                        return Err(self.exhausted(subnet, usage));
                    };
                    let w = ip_blocks.window(&self.keys, subnet.pool(), ip_space, b);
                    let resp = self
                        .txn(&read_op, Txn::new().and_then(w.ops()))
                        .await?
                        .op_responses();
                    found = self
                        .hints
                        .pick(HintPool::Subnet(subnet.name.clone()), w.free(&resp));
                    full += 1;
                }
                match found {
                    Some(Addr::Ip(a)) => a,
                    _ => unreachable!("an IP window yields IPs"),
                }
            }
        };

        let mac = match mac_req {
            MacRequest::None => None,
            MacRequest::Static(m) => {
                if let Some(kv) = kvs_of(&mac_resp[0]).first() {
                    let holder: Record = decode(kv)?;
                    return Err(Error::MacTaken {
                        mac: *m,
                        holder: Box::new(holder.owner),
                    });
                }
                Some(*m)
            }
            MacRequest::Auto(pool) => {
                let blocks = mac_blocks.as_mut().expect("auto mac has blocks");
                let mut found = mac_window.as_ref().and_then(|w| {
                    self.hints
                        .pick(HintPool::MacPool(pool.name.clone()), w.free(mac_resp))
                });
                let sweep_limit = blocks.total.min(u128::from(self.opts.full_sweep_windows));
                while found.is_none() {
                    let b = match blocks.advance() {
                        Some(b) if blocks.visited <= sweep_limit => b,
                        _ => {
                            return Err(Error::MacPoolExhausted {
                                pool: pool.name.clone(),
                                capacity: pool.capacity(),
                            })
                        }
                    };
                    let w = blocks.window(&self.keys, pool.set(), Space::Mac, b);
                    let resp = self
                        .txn("read mac candidates", Txn::new().and_then(w.ops()))
                        .await?
                        .op_responses();
                    found = self
                        .hints
                        .pick(HintPool::MacPool(pool.name.clone()), w.free(&resp));
                }
                match found {
                    Some(Addr::Mac(m)) => Some(m),
                    _ => unreachable!("a MAC window yields MACs"),
                }
            }
        };

        Attempt::of(
            self.claim(subnet, owner, ip_req, mac_req, sticky, lease, ip, mac, None)
                .await?,
        )
    }

    /// Claims `ip` (and `mac`) for `owner` in one transaction, each key only if absent, pending
    /// under `lease`. `None`: someone else won a key of an automatic choice (retry).
    #[allow(clippy::too_many_arguments)]
    async fn claim(
        &self,
        subnet: &Subnet,
        owner: &Owner,
        ip_req: IpRequest,
        mac_req: &MacRequest,
        sticky: Option<&StickyHold>,
        lease: i64,
        ip: IpAddr,
        mac: Option<MacAddr>,
        early: Option<&StoredSubnet>,
    ) -> Result<Option<Reservation>, Error> {
        let record = Record {
            subnet: subnet.name.clone(),
            ip,
            prefix_len: subnet.cidr.prefix(),
            mac,
            owner: owner.clone(),
            state: State::Pending,
            since: rfc3339_now(),
            lease: Some(format!("{lease:x}")),
            sticky: sticky.map(|s| StickyRef {
                key: s.key.clone(),
                hold_seconds: s.hold.as_secs(),
            }),
        };
        let keys = self.record_keys(&record);
        let subnet_key = self.keys.subnet(&subnet.name);
        let mut absent: Vec<Compare> = keys
            .iter()
            .map(|k| Compare::create_revision(k.clone(), CompareOp::Equal, 0))
            .collect();
        match early {
            // The subnet must still be configured: the operator deletes its key only once no
            // reservation uses it, and a claim racing that deletion must not slip in after it.
            None => absent.push(Compare::create_revision(
                subnet_key.clone(),
                CompareOp::Greater,
                0,
            )),
            // An early claim: the configuration must be the one it was planned with.
            Some(stored) => {
                absent.push(Compare::mod_revision(
                    subnet_key.clone(),
                    CompareOp::Equal,
                    stored.revision,
                ));
                if let (Some(pool), Some(stored)) = (&subnet.mac_pool, &stored.pool) {
                    absent.push(Compare::mod_revision(
                        self.keys.macpool(pool),
                        CompareOp::Equal,
                        stored.revision,
                    ));
                }
            }
        }
        let mut on_conflict: Vec<TxnOp> =
            keys.iter().map(|k| TxnOp::get(k.clone(), None)).collect();
        on_conflict.push(TxnOp::get(
            subnet_key.clone(),
            Some(GetOptions::new().with_keys_only()),
        ));
        let txn = Txn::new()
            .when(absent)
            .and_then(self.put_record_ops(&record, Some(lease)))
            .or_else(on_conflict);
        let resp = match self
            .txn(&format!("claim ip {ip} in subnet {}", subnet.name), txn)
            .await
        {
            Ok(r) => r,
            // The shared lease may have been revoked or expired since it was cached.
            Err(Error::Etcd { source, .. }) if source.to_string().contains("lease not found") => {
                *self.lease.lock().await = None;
                if let Some(f) = &self.opts.lease_file {
                    SharedLease::forget(f, lease);
                }
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        if resp.succeeded() {
            let revision = resp.header().map(|h| h.revision()).unwrap_or_default();
            tracing::debug!(%ip, mac = ?mac, owner = %owner, early = early.is_some(), "reserved (pending)");
            return Ok(Some(Reservation { record, revision }));
        }
        if early.is_some() {
            // Whatever was in the way, the caller's ordinary reservation finds it out.
            return Ok(None);
        }
        // Someone else won a key. The owner index first: the serializable read may have missed
        // our own earlier reservation. Static addresses name their holder; automatic ones retry.
        let conflict = resp.op_responses();
        let held = |i: usize| kvs_of(&conflict[i]).first().cloned();
        if held(keys.len()).is_none() {
            return Err(Error::SubnetNotFound(subnet.name.clone(), subnet_key));
        }
        if let Some(kv) = held(1) {
            return self
                .existing_attachment(subnet, owner, ip_req, mac_req, &kv)
                .await;
        }
        if let (IpRequest::Static(a), Some(kv)) = (ip_req, held(0)) {
            let holder: Record = decode(&kv)?;
            return Err(Error::IpTaken {
                subnet: subnet.name.clone(),
                ip: a,
                holder: Box::new(holder.owner),
            });
        }
        if let (MacRequest::Static(m), Some(kv)) = (mac_req, held(3)) {
            let holder: Record = decode(&kv)?;
            return Err(Error::MacTaken {
                mac: *m,
                holder: Box::new(holder.owner),
            });
        }
        Ok(None)
    }

    /// The attachment already has a record: hand it back (idempotent ADD), take it over for a new
    /// container of the same pod UID, or refuse when it does not match the request.
    async fn existing_attachment(
        &self,
        subnet: &Subnet,
        owner: &Owner,
        ip_req: IpRequest,
        mac_req: &MacRequest,
        kv: &KeyValue,
    ) -> Result<Option<Reservation>, Error> {
        let held: Record = decode(kv)?;
        let mismatch = if held.subnet != subnet.name {
            Some(format!("subnet {}", subnet.name))
        } else if matches!(ip_req, IpRequest::Static(a) if a != held.ip) {
            Some(format!("ip {ip_req:?}"))
        } else if matches!(mac_req, MacRequest::Static(m) if Some(*m) != held.mac) {
            Some(format!("mac {mac_req:?}"))
        } else if matches!(mac_req, MacRequest::None) != held.mac.is_none() {
            Some("a different MAC request".to_string())
        } else {
            None
        };
        if let Some(requested) = mismatch {
            return Err(Error::AttachmentConflict {
                owner: Box::new(owner.clone()),
                held: format!(
                    "ip {} in subnet {}{}",
                    held.ip,
                    held.subnet,
                    held.mac
                        .map(|m| format!(" with mac {m}"))
                        .unwrap_or_default()
                ),
                requested,
            });
        }
        let existing = Reservation {
            revision: kv.mod_revision(),
            record: held,
        };
        if existing.record.owner.same_owner(owner) {
            return Ok(Some(existing));
        }
        // Same pod UID and ifname, new sandbox: the pod keeps its address across a sandbox restart.
        let mut record = existing.record.clone();
        record.owner = owner.clone();
        let lease = match record.state {
            // Held records have no owner key, so they never reach this point.
            State::Pending | State::Held => record
                .lease
                .as_deref()
                .and_then(|l| i64::from_str_radix(l, 16).ok()),
            State::Committed => None,
        };
        let mut ops = self.put_record_ops(&record, lease);
        if record.owner.node != existing.record.owner.node {
            let o = &existing.record.owner;
            ops.push(TxnOp::delete(
                self.keys.node(&o.node, &o.pod_uid, &o.ifname),
                None,
            ));
        }
        let txn = Txn::new().when(self.unchanged(&existing)).and_then(ops);
        let resp = self
            .txn(&format!("hand over attachment to {owner}"), txn)
            .await?;
        if !resp.succeeded() {
            return Ok(None);
        }
        let revision = resp.header().map(|h| h.revision()).unwrap_or_default();
        Ok(Some(Reservation { record, revision }))
    }

    /// Makes a pending reservation durable: rewrites its keys without the lease, only if they are
    /// still exactly as reserved. Idempotent.
    ///
    /// # Errors
    /// [`Error::CommitFailed`] when the lease expired first (the keys are gone) or the reservation
    /// changed hands.
    pub async fn commit(&self, res: &Reservation) -> Result<Reservation, Error> {
        let mut record = res.record.clone();
        record.state = State::Committed;
        record.lease = None;
        let owner_key = self.keys.owner(&record.owner.pod_uid, &record.owner.ifname);
        let txn = Txn::new()
            .when(self.unchanged(res))
            .and_then(self.put_record_ops(&record, None))
            .or_else(vec![TxnOp::get(owner_key, None)]);
        let op = format!("commit ip {} for {}", record.ip, record.owner);
        let resp = self.txn(&op, txn).await?;
        if resp.succeeded() {
            let revision = resp.header().map(|h| h.revision()).unwrap_or_default();
            return Ok(Reservation { record, revision });
        }
        let now = resp.op_responses();
        let fail = |reason: String| Error::CommitFailed {
            owner: Box::new(res.record.owner.clone()),
            reason,
        };
        match kvs_of(&now[0]).first() {
            None => Err(fail(format!(
                "the pending reservation of ip {} expired before commit (pending TTL {} s)",
                res.record.ip,
                self.opts.pending_ttl.as_secs()
            ))),
            Some(kv) => {
                let current: Record = decode(kv)?;
                if current.owner.same_owner(&res.record.owner)
                    && current.state == State::Committed
                    && current.ip == res.record.ip
                {
                    Ok(Reservation {
                        record: current,
                        revision: kv.mod_revision(),
                    })
                } else {
                    Err(fail(format!(
                        "the attachment is now held by {}",
                        current.owner
                    )))
                }
            }
        }
    }

    /// Frees what `owner` holds — only if the stored owner has the same pod UID, container ID and
    /// ifname, so a DEL for an older incarnation never frees a newer pod's address. Idempotent.
    /// Only `pod_uid`, `container_id` and `ifname` of `owner` are used.
    ///
    /// # Errors
    /// [`Error::Unavailable`] / [`Error::RetriesExhausted`] (retryable).
    pub async fn release(&self, owner: &Owner) -> Result<Released, Error> {
        let op = format!("release attachment {owner}");
        for _ in 0..self.opts.max_attempts {
            let Some(held) = self.attachment(&owner.pod_uid, &owner.ifname).await? else {
                return Ok(Released::NotHeld);
            };
            if held.record.owner.container_id != owner.container_id {
                return Ok(Released::Stale(held.record));
            }
            if self.release_exact(&held).await? {
                tracing::debug!(ip = %held.record.ip, owner = %owner, "released");
                return Ok(Released::Freed(held.record));
            }
        }
        Err(Error::RetriesExhausted {
            op,
            attempts: self.opts.max_attempts,
        })
    }

    /// Compare-and-delete: frees `res` only if its keys are exactly as read (same revision), so
    /// a reservation created or changed meanwhile is never touched. For garbage collection.
    /// Returns whether it deleted.
    ///
    /// # Errors
    /// [`Error::Unavailable`] (retryable).
    pub async fn release_exact(&self, res: &Reservation) -> Result<bool, Error> {
        if let Some(s) = res.record.sticky.as_ref().filter(|s| s.hold_seconds > 0) {
            if res.record.state != State::Held {
                return self.hold(res, s.hold_seconds).await;
            }
        }
        let deletes: Vec<TxnOp> = self
            .record_keys(&res.record)
            .into_iter()
            .map(|k| TxnOp::delete(k, None))
            .collect();
        let txn = Txn::new().when(self.unchanged(res)).and_then(deletes);
        let op = format!("delete reservation of ip {}", res.record.ip);
        Ok(self.txn(&op, txn).await?.succeeded())
    }

    /// Turns a sticky reservation whose pod is gone into a held one: the IP, MAC and sticky keys
    /// move to a lease of `hold_seconds` (expiry frees them), the owner and node keys go.
    async fn hold(&self, res: &Reservation, hold_seconds: u64) -> Result<bool, Error> {
        let op = format!("hold ip {} for its sticky key", res.record.ip);
        let mut lc = self.client.lease_client();
        let ttl = hold_seconds.clamp(1, i64::MAX as u64) as i64;
        let lease = tokio::time::timeout(self.opts.request_timeout, lc.grant(ttl, None))
            .await
            .map_err(|_| Error::Unavailable {
                op: op.clone(),
                source: etcd_client::Error::IoError(std::io::ErrorKind::TimedOut.into()),
            })?
            .map_err(|e| Error::etcd(&op, e))?
            .id();
        let mut record = res.record.clone();
        record.state = State::Held;
        record.lease = Some(format!("{lease:x}"));
        record.since = rfc3339_now();
        let o = &res.record.owner;
        let mut ops = self.put_record_ops(&record, Some(lease));
        ops.push(TxnOp::delete(self.keys.owner(&o.pod_uid, &o.ifname), None));
        ops.push(TxnOp::delete(
            self.keys.node(&o.node, &o.pod_uid, &o.ifname),
            None,
        ));
        let txn = Txn::new().when(self.unchanged(res)).and_then(ops);
        let held = self.txn(&op, txn).await?.succeeded();
        if held {
            tracing::debug!(ip = %record.ip, hold_seconds, "held for sticky key");
        }
        Ok(held)
    }

    fn reservations(kvs: &[KeyValue]) -> Result<Vec<Reservation>, Error> {
        kvs.iter()
            .map(|kv| {
                Ok(Reservation {
                    record: decode(kv)?,
                    revision: kv.mod_revision(),
                })
            })
            .collect()
    }

    /// The reservation of one attachment, if any.
    ///
    /// # Errors
    /// [`Error::Unavailable`]; [`Error::Corrupt`] for an undecodable record.
    pub async fn attachment(
        &self,
        pod_uid: &str,
        ifname: &str,
    ) -> Result<Option<Reservation>, Error> {
        let kvs = self
            .get("read attachment", self.keys.owner(pod_uid, ifname), None)
            .await?;
        Ok(Self::reservations(&kvs)?.pop())
    }

    /// Every reservation of one pod UID.
    ///
    /// # Errors
    /// [`Error::Unavailable`]; [`Error::Corrupt`].
    pub async fn by_pod(&self, pod_uid: &str) -> Result<Vec<Reservation>, Error> {
        let kvs = self
            .get(
                "read pod attachments",
                self.keys.owners_of(pod_uid),
                Some(GetOptions::new().with_prefix()),
            )
            .await?;
        Self::reservations(&kvs)
    }

    /// Every reservation on one node (for the plugin's GC), read from the node index.
    ///
    /// # Errors
    /// [`Error::Unavailable`]; [`Error::Corrupt`].
    pub async fn by_node(&self, node: &str) -> Result<Vec<Reservation>, Error> {
        let kvs = self
            .get(
                "read node attachments",
                self.keys.node_attachments(node),
                Some(GetOptions::new().with_prefix()),
            )
            .await?;
        Self::reservations(&kvs)
    }

    /// Every reservation (all owners): for the operator's GC and `ipam` listings.
    ///
    /// # Errors
    /// [`Error::Unavailable`]; [`Error::Corrupt`].
    pub async fn all(&self) -> Result<Vec<Reservation>, Error> {
        let kvs = self
            .get(
                "read all attachments",
                self.keys.owners(),
                Some(GetOptions::new().with_prefix()),
            )
            .await?;
        Self::reservations(&kvs)
    }

    /// Who holds `ip` in `subnet`.
    ///
    /// # Errors
    /// [`Error::Unavailable`]; [`Error::Corrupt`].
    pub async fn holder_of_ip(
        &self,
        subnet: &str,
        ip: IpAddr,
    ) -> Result<Option<Reservation>, Error> {
        let kvs = self.get("read ip", self.keys.ip(subnet, ip), None).await?;
        Ok(Self::reservations(&kvs)?.pop())
    }

    /// Who holds `mac`.
    ///
    /// # Errors
    /// [`Error::Unavailable`]; [`Error::Corrupt`].
    pub async fn holder_of_mac(&self, mac: MacAddr) -> Result<Option<Reservation>, Error> {
        let kvs = self.get("read mac", self.keys.mac(mac), None).await?;
        Ok(Self::reservations(&kvs)?.pop())
    }

    fn exhausted(&self, subnet: &Subnet, usage: Usage) -> Error {
        Error::PoolExhausted {
            subnet: subnet.name.clone(),
            used: usage.used,
            capacity: usage.capacity,
        }
    }

    /// Used and free counts of a subnet. etcd counts the keys server-side (`count_only`), so no
    /// key is transferred however large the pool.
    ///
    /// # Errors
    /// [`Error::Unavailable`].
    pub async fn usage(&self, subnet: &Subnet) -> Result<Usage, Error> {
        let key = self.keys.ips(&subnet.name);
        let txn = Txn::new().and_then(vec![TxnOp::get(
            key,
            Some(GetOptions::new().with_prefix().with_count_only()),
        )]);
        let resp = self
            .txn(
                &format!("count reservations in subnet {}", subnet.name),
                txn,
            )
            .await?;
        let used = match resp.op_responses().first() {
            Some(TxnOpResponse::Get(g)) => g.count().max(0) as u128,
            _ => 0,
        };
        let capacity = subnet.capacity();
        Ok(Usage {
            used,
            capacity,
            free: capacity.saturating_sub(used),
        })
    }

    /// The pod mirror of `namespace`/`name`, if the operator has written one.
    ///
    /// # Errors
    /// [`Error::Unavailable`]; [`Error::Corrupt`] when the value does not decode.
    pub async fn pod_record(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<crate::model::PodRecord>, Error> {
        let kvs = self
            .get(
                &format!("read pod mirror {namespace}/{name}"),
                self.keys.pod(namespace, name),
                None,
            )
            .await?;
        kvs.first().map(decode).transpose()
    }

    /// Every AllocationRule as mirrored under `<prefix>/config/rules/`, in key order.
    ///
    /// # Errors
    /// [`Error::Unavailable`]; [`Error::Corrupt`] naming the key of a value that does not decode.
    pub async fn rules(&self) -> Result<Vec<Mirrored<crate::rules::AllocationRuleSpec>>, Error> {
        self.rules_with_fingerprint().await.map(|(rules, _)| rules)
    }

    /// The [`RulesFingerprint`](crate::rules::RulesFingerprint) of the rules prefix, from one
    /// read that transfers at most one key and no value: whether the rules are still those a
    /// cache was built from, without reading them.
    ///
    /// # Errors
    /// [`Error::Unavailable`]; [`Error::Etcd`] for an answer without the read (never taken
    /// for "no rules").
    pub async fn rules_fingerprint(&self) -> Result<crate::rules::RulesFingerprint, Error> {
        use crate::rules::RulesFingerprint;
        let txn = Txn::new().and_then(vec![TxnOp::get(
            self.keys.rules(),
            Some(RulesFingerprint::read_options()),
        )]);
        let op = "read allocation rules fingerprint";
        match self.txn(op, txn).await?.op_responses().first() {
            Some(TxnOpResponse::Get(g)) => Ok(RulesFingerprint::of_response(g)),
            // Never "no rules": that would let a caller skip the rules.
            _ => Err(Error::Etcd {
                op: op.to_owned(),
                source: etcd_client::Error::InvalidArgs(
                    "the transaction's answer has no get response".to_owned(),
                ),
            }),
        }
    }

    /// As [`Allocator::rules`], with the fingerprint of exactly the rules returned (computed
    /// from the same response, so no write in between can make them disagree).
    ///
    /// # Errors
    /// As [`Allocator::rules`].
    pub async fn rules_with_fingerprint(
        &self,
    ) -> Result<
        (
            Vec<Mirrored<crate::rules::AllocationRuleSpec>>,
            crate::rules::RulesFingerprint,
        ),
        Error,
    > {
        let kvs = self
            .get(
                "read allocation rules",
                self.keys.rules(),
                Some(GetOptions::new().with_prefix()),
            )
            .await?;
        let fingerprint = crate::rules::RulesFingerprint::of_kvs(&kvs);
        Ok((
            kvs.iter().map(decode).collect::<Result<_, _>>()?,
            fingerprint,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_shape() {
        let s = rfc3339_now();
        assert_eq!(s.len(), 20, "{s}");
        assert!(
            s.starts_with("20") && s.ends_with('Z') && s.as_bytes()[10] == b'T',
            "{s}"
        );
    }
}
