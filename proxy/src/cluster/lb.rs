//! Load balancers: pick a host from a cluster's healthy hosts. Round robin (smooth weighted when
//! weights differ), least request (power of N choices), random, ring hash and Maglev (consistent
//! hashing on a request hash from the route's hash policies).

use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use super::Host;
use crate::model::cluster::LbPolicy;

/// Per endpoint-set balancer state, built once when the set changes.
#[derive(Debug)]
pub struct Balancer {
    policy: LbPolicy,
    /// Indexes of healthy hosts (all hosts when none is healthy: Envoy's panic threshold).
    healthy: Vec<usize>,
    /// Weighted round-robin schedule over `healthy` (empty when all weights are equal).
    schedule: Vec<u32>,
    rr: AtomicUsize,
    /// Ring hash: sorted (hash, host index).
    ring: Vec<(u64, u32)>,
    /// Maglev lookup table of host indexes.
    maglev: Vec<u32>,
    /// Several priorities: a balancer per level and the share of traffic each gets.
    levels: Option<Box<Levels>>,
}

/// Envoy's priority load balancing: each priority gets traffic in proportion to its health
/// (healthy share × overprovisioning factor, capped at 100%), higher priorities first.
#[derive(Debug)]
struct Levels {
    /// Cumulative load per level, in percent; the last is 100.
    cumulative: Vec<u32>,
    balancers: Vec<Balancer>,
}

fn hash64<T: Hash + ?Sized>(v: &T) -> u64 {
    // FNV-1a: stable across processes and versions (unlike SipHash's random keys), so a
    // given key maps to the same host on every Sluice.
    struct Fnv(u64);
    impl Hasher for Fnv {
        fn finish(&self) -> u64 {
            self.0
        }
        fn write(&mut self, bytes: &[u8]) {
            for b in bytes {
                self.0 ^= *b as u64;
                self.0 = self.0.wrapping_mul(0x100000001b3);
            }
        }
    }
    let mut h = Fnv(0xcbf29ce484222325);
    v.hash(&mut h);
    // Finalise (splitmix64) so that nearby keys spread over the ring.
    let mut z = h.finish().wrapping_add(0x9e3779b97f4a7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d049bb133111eb);
    z ^ (z >> 31)
}

/// A stable 64-bit hash of request data for hash policies.
pub fn request_hash(parts: &[&[u8]]) -> u64 {
    hash64(parts)
}

impl Balancer {
    /// A balancer that uses every host when none is healthy.
    pub fn new(policy: LbPolicy, hosts: &[Arc<Host>]) -> Balancer {
        Balancer::with_panic_threshold(policy, hosts, 100.0)
    }

    /// A balancer over the healthy, non-ejected hosts; when they are fewer than `panic`
    /// percent of all hosts, Envoy's panic mode balances over all of them (`panic` 0: never;
    /// with no usable host the cluster then has none).
    pub fn with_panic_threshold(policy: LbPolicy, hosts: &[Arc<Host>], panic: f64) -> Balancer {
        Balancer::for_set(policy, hosts, panic, 140)
    }

    /// A balancer for a cluster's endpoint set: one level when every host has the same
    /// priority, else a balancer per priority with Envoy's priority load
    /// (`overprovisioning` is the assignment's factor, in percent, default 140).
    pub fn for_set(
        policy: LbPolicy,
        hosts: &[Arc<Host>],
        panic: f64,
        overprovisioning: u32,
    ) -> Balancer {
        let first = hosts.first().map_or(0, |h| h.priority);
        if hosts.iter().all(|h| h.priority == first) {
            return Balancer::over(policy, hosts, (0..hosts.len()).collect(), panic);
        }
        let mut prios: Vec<u32> = hosts.iter().map(|h| h.priority).collect();
        prios.sort_unstable();
        prios.dedup();
        let members: Vec<Vec<usize>> = prios
            .iter()
            .map(|p| {
                (0..hosts.len())
                    .filter(|i| hosts[*i].priority == *p)
                    .collect()
            })
            .collect();
        let usable = |i: &usize| hosts[*i].healthy && !hosts[*i].outlier.is_ejected();
        let health: Vec<u64> = members
            .iter()
            .map(|m| {
                let ok = m.iter().filter(|i| usable(i)).count() as u64;
                (overprovisioning as u64 * ok / m.len().max(1) as u64).min(100)
            })
            .collect();
        let total: u64 = health.iter().sum::<u64>().min(100);
        let in_panic = panic > 0.0 && (total as f64) < panic;
        let mut load: Vec<u64> = if in_panic {
            // Panic: spread by host count; each level then uses all its hosts.
            let n = hosts.len().max(1) as u64;
            members.iter().map(|m| m.len() as u64 * 100 / n).collect()
        } else if total == 0 {
            // Nothing usable and panic disabled: P0, which then has no host to give.
            let mut l = vec![0; members.len()];
            l[0] = 100;
            l
        } else {
            let mut remaining = 100u64;
            health
                .iter()
                .map(|h| {
                    let l = (h * 100 / total).min(remaining);
                    remaining -= l;
                    l
                })
                .collect()
        };
        // Rounding leftovers go to the first level with traffic.
        let sum: u64 = load.iter().sum();
        if sum < 100 {
            let i = load.iter().position(|l| *l > 0).unwrap_or(0);
            load[i] += 100 - sum;
        }
        let mut acc = 0u32;
        let cumulative = load
            .iter()
            .map(|l| {
                acc += *l as u32;
                acc
            })
            .collect();
        // In panic every host of a level takes traffic, healthy or not.
        let all = in_panic;
        let balancers = members
            .into_iter()
            .map(|m| Balancer::over(policy, hosts, m, if all { f64::INFINITY } else { panic }))
            .collect();
        Balancer {
            policy,
            healthy: (0..hosts.len()).collect(),
            schedule: Vec::new(),
            rr: AtomicUsize::new(0),
            ring: Vec::new(),
            maglev: Vec::new(),
            levels: Some(Box::new(Levels {
                cumulative,
                balancers,
            })),
        }
    }

    /// A balancer over the `candidates` (indexes into `hosts`) of one priority. `panic` as in
    /// [`Balancer::with_panic_threshold`]; infinite: every candidate, healthy or not.
    fn over(policy: LbPolicy, hosts: &[Arc<Host>], candidates: Vec<usize>, panic: f64) -> Balancer {
        let mut healthy: Vec<usize> = candidates
            .iter()
            .copied()
            .filter(|i| hosts[*i].healthy && !hosts[*i].outlier.is_ejected())
            .collect();
        let all = candidates.len();
        let in_panic = if panic.is_infinite() {
            true
        } else if panic >= 100.0 {
            healthy.is_empty()
        } else {
            (healthy.len() as f64) * 100.0 < panic * all as f64
        };
        if in_panic {
            healthy = candidates;
        }
        let mut b = Balancer {
            policy,
            schedule: Vec::new(),
            rr: AtomicUsize::new(fastrand::usize(..healthy.len().max(1))),
            ring: Vec::new(),
            maglev: Vec::new(),
            healthy,
            levels: None,
        };
        match policy {
            LbPolicy::RoundRobin => b.build_schedule(hosts),
            LbPolicy::RingHash { min_size, max_size } => b.build_ring(hosts, min_size, max_size),
            LbPolicy::Maglev { table_size } => b.build_maglev(hosts, table_size),
            _ => {}
        }
        b
    }

    fn build_schedule(&mut self, hosts: &[Arc<Host>]) {
        let weights: Vec<u32> = self.healthy.iter().map(|i| hosts[*i].weight).collect();
        if weights.windows(2).all(|w| w[0] == w[1]) {
            return;
        }
        let total: u64 = weights.iter().map(|w| *w as u64).sum();
        // Smooth weighted round robin, one full cycle (bounded for huge weights).
        let len = total.min(1 << 16) as usize;
        let scale = total as f64 / len as f64;
        let mut current = vec![0f64; weights.len()];
        for _ in 0..len {
            let mut best = 0;
            for (i, w) in weights.iter().enumerate() {
                current[i] += *w as f64 / scale;
                if current[i] > current[best] {
                    best = i;
                }
            }
            current[best] -= len as f64;
            self.schedule.push(best as u32);
        }
    }

    fn build_ring(&mut self, hosts: &[Arc<Host>], min: u64, max: u64) {
        let total: u64 = self.healthy.iter().map(|i| hosts[*i].weight as u64).sum();
        if total == 0 {
            return;
        }
        let min_w = self
            .healthy
            .iter()
            .map(|i| hosts[*i].weight as u64)
            .min()
            .unwrap_or(1);
        // As Envoy: scale so the lightest host gets at least one entry and the ring is at
        // least `min` entries, capped at `max`.
        let scale = ((min as f64 / total as f64).max(1.0 / min_w as f64) * total as f64)
            .min(max as f64)
            / total as f64;
        for (slot, i) in self.healthy.iter().enumerate() {
            let h = &hosts[*i];
            let n = ((h.weight as f64 * scale).round() as u64).max(1);
            let key = h.addr.to_string();
            for r in 0..n {
                self.ring.push((hash64(&(key.as_str(), r)), slot as u32));
            }
        }
        self.ring.sort_unstable();
    }

    fn build_maglev(&mut self, hosts: &[Arc<Host>], m: u64) {
        let n = self.healthy.len();
        if n == 0 {
            return;
        }
        let m = m.max(n as u64) as usize;
        let max_w = self
            .healthy
            .iter()
            .map(|i| hosts[*i].weight)
            .max()
            .unwrap_or(1) as f64;
        let perms: Vec<(usize, usize)> = self
            .healthy
            .iter()
            .map(|i| {
                let key = hosts[*i].addr.to_string();
                let offset = (hash64(&(key.as_str(), 0u8)) % m as u64) as usize;
                let skip = (hash64(&(key.as_str(), 1u8)) % (m as u64 - 1)) as usize + 1;
                (offset, skip)
            })
            .collect();
        let weights: Vec<f64> = self
            .healthy
            .iter()
            .map(|i| hosts[*i].weight as f64 / max_w)
            .collect();
        let mut table = vec![u32::MAX; m];
        let mut next = vec![0usize; n];
        let mut credit = vec![0f64; n];
        let mut filled = 0;
        let mut iteration = 0u64;
        while filled < m {
            iteration += 1;
            for i in 0..n {
                credit[i] += weights[i];
                if credit[i] < 1.0 {
                    continue;
                }
                credit[i] -= 1.0;
                let (offset, skip) = perms[i];
                loop {
                    let c = (offset + next[i] * skip) % m;
                    next[i] += 1;
                    if table[c] == u32::MAX {
                        table[c] = i as u32;
                        filled += 1;
                        break;
                    }
                }
                if filled == m {
                    break;
                }
            }
            if iteration > 10 * m as u64 {
                break;
            }
        }
        self.maglev = table;
    }

    /// Picks a host. `hash` is the request hash for ring hash and Maglev (random when absent);
    /// `avoid` returns true for hosts a retry should not reuse (tried a few times, then
    /// ignored).
    pub fn pick(
        &self,
        hosts: &[Arc<Host>],
        hash: Option<u64>,
        avoid: &dyn Fn(&Host) -> bool,
    ) -> Option<Arc<Host>> {
        if let Some(l) = &self.levels {
            // The priority, by the request hash when there is one (so hashing stays sticky).
            let r = (hash.unwrap_or_else(|| fastrand::u64(..)) % 100) as u32;
            let i = l.cumulative.iter().position(|c| r < *c).unwrap_or(0);
            return l.balancers[i].pick(hosts, hash, avoid);
        }
        if self.healthy.is_empty() {
            return None;
        }
        let mut fallback = None;
        for attempt in 0..3u64 {
            let slot = self.pick_slot(hosts, hash.map(|h| h.wrapping_add(attempt)));
            let host = &hosts[self.healthy[slot]];
            if !avoid(host) {
                return Some(host.clone());
            }
            fallback.get_or_insert_with(|| host.clone());
        }
        fallback
    }

    fn pick_slot(&self, hosts: &[Arc<Host>], hash: Option<u64>) -> usize {
        let n = self.healthy.len();
        match self.policy {
            LbPolicy::RoundRobin => {
                let c = self.rr.fetch_add(1, Ordering::Relaxed);
                if self.schedule.is_empty() {
                    c % n
                } else {
                    self.schedule[c % self.schedule.len()] as usize
                }
            }
            LbPolicy::Random => fastrand::usize(..n),
            LbPolicy::LeastRequest { choices } => {
                if n == 1 {
                    return 0;
                }
                let mut best = fastrand::usize(..n);
                for _ in 1..choices {
                    let c = fastrand::usize(..n);
                    let load = |s: usize| {
                        let h = &hosts[self.healthy[s]];
                        // Weighted: active requests per unit of weight.
                        (h.active.get().max(0) as u64 + 1) * 1000 / h.weight as u64
                    };
                    if load(c) < load(best) {
                        best = c;
                    }
                }
                best
            }
            LbPolicy::RingHash { .. } => {
                if self.ring.is_empty() {
                    return 0;
                }
                let h = hash.unwrap_or_else(|| fastrand::u64(..));
                let i = self.ring.partition_point(|(k, _)| *k < h);
                self.ring[i % self.ring.len()].1 as usize
            }
            LbPolicy::Maglev { .. } => {
                if self.maglev.is_empty() {
                    return 0;
                }
                let h = hash.unwrap_or_else(|| fastrand::u64(..));
                self.maglev[(h % self.maglev.len() as u64) as usize] as usize
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn hosts(weights: &[u32]) -> Vec<Arc<Host>> {
        weights
            .iter()
            .enumerate()
            .map(|(i, w)| {
                Arc::new(Host::new(
                    format!("127.0.0.{}:80", i + 1).parse().unwrap(),
                    *w,
                    true,
                    Arc::from(""),
                ))
            })
            .collect()
    }

    fn counts(
        b: &Balancer,
        hs: &[Arc<Host>],
        n: usize,
        hash: impl Fn(usize) -> Option<u64>,
    ) -> HashMap<String, usize> {
        let mut m = HashMap::new();
        for i in 0..n {
            let h = b.pick(hs, hash(i), &|_| false).unwrap();
            *m.entry(h.addr.to_string()).or_default() += 1;
        }
        m
    }

    #[test]
    fn round_robin_equal_and_weighted() {
        let hs = hosts(&[1, 1, 1]);
        let b = Balancer::new(LbPolicy::RoundRobin, &hs);
        assert!(counts(&b, &hs, 300, |_| None).values().all(|c| *c == 100));
        let hs = hosts(&[1, 3]);
        let b = Balancer::new(LbPolicy::RoundRobin, &hs);
        let c = counts(&b, &hs, 400, |_| None);
        assert_eq!(c["127.0.0.1:80"], 100);
        assert_eq!(c["127.0.0.2:80"], 300);
    }

    #[test]
    fn unhealthy_hosts_skipped() {
        let mut hs = hosts(&[1, 1]);
        Arc::get_mut(&mut hs[0]).unwrap().healthy = false;
        let b = Balancer::new(LbPolicy::RoundRobin, &hs);
        assert_eq!(counts(&b, &hs, 10, |_| None)["127.0.0.2:80"], 10);
    }

    /// Share of picks per priority over 10,000 random picks.
    fn per_priority(b: &Balancer, hs: &[Arc<Host>]) -> [usize; 2] {
        let mut out = [0; 2];
        for _ in 0..10_000 {
            let h = b.pick(hs, None, &|_| false).unwrap();
            out[h.priority as usize] += 1;
        }
        out
    }

    #[test]
    fn priorities_take_load_by_health_with_overprovisioning() {
        let set = |healthy: [bool; 4]| {
            let mut hs = hosts(&[1, 1, 1, 1]);
            for (i, h) in hs.iter_mut().enumerate() {
                let h = Arc::get_mut(h).unwrap();
                h.priority = (i / 2) as u32;
                h.healthy = healthy[i];
            }
            hs
        };
        let hs = set([true; 4]);
        let b = Balancer::for_set(LbPolicy::RoundRobin, &hs, 50.0, 140);
        assert_eq!(
            per_priority(&b, &hs),
            [10_000, 0],
            "P0 healthy takes everything"
        );
        // Half of P0 healthy: 1.4 × 50% = 70% stays on P0, 30% spills to P1.
        let hs = set([true, false, true, true]);
        let b = Balancer::for_set(LbPolicy::RoundRobin, &hs, 50.0, 140);
        let [p0, p1] = per_priority(&b, &hs);
        assert!(
            (6_700..7_300).contains(&p0) && p0 + p1 == 10_000,
            "{p0}/{p1}"
        );
        // Within P0 only the healthy host is used.
        assert!((0..200).all(|_| b.pick(&hs, None, &|_| false).unwrap().addr != hs[1].addr));
        // P0 down: everything fails over to P1.
        let hs = set([false, false, true, true]);
        let b = Balancer::for_set(LbPolicy::RoundRobin, &hs, 50.0, 140);
        assert_eq!(per_priority(&b, &hs), [0, 10_000]);
        // Nothing healthy: panic, traffic by host count over every host.
        let hs = set([false; 4]);
        let b = Balancer::for_set(LbPolicy::RoundRobin, &hs, 50.0, 140);
        let [p0, p1] = per_priority(&b, &hs);
        assert!(
            (4_700..5_300).contains(&p0) && p0 + p1 == 10_000,
            "{p0}/{p1}"
        );
        // Panic disabled (Istio with outlier detection): no host at all.
        let b = Balancer::for_set(LbPolicy::RoundRobin, &hs, 0.0, 140);
        assert!(b.pick(&hs, None, &|_| false).is_none());
    }

    #[test]
    fn panic_threshold_and_ejected_hosts() {
        let mut hs = hosts(&[1, 1, 1]);
        Arc::get_mut(&mut hs[0]).unwrap().healthy = false;
        hs[1]
            .outlier
            .ejected
            .store(true, std::sync::atomic::Ordering::Relaxed);
        // 1 of 3 usable (33%) is under Envoy's default 50%: panic, all hosts are used.
        let b = Balancer::with_panic_threshold(LbPolicy::RoundRobin, &hs, 50.0);
        assert_eq!(counts(&b, &hs, 30, |_| None).len(), 3);
        // Istio's DestinationRule default (minHealthPercent 0): no panic, only the good host.
        let b = Balancer::with_panic_threshold(LbPolicy::RoundRobin, &hs, 0.0);
        assert_eq!(counts(&b, &hs, 30, |_| None)["127.0.0.3:80"], 30);
        hs[2]
            .outlier
            .ejected
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let b = Balancer::with_panic_threshold(LbPolicy::RoundRobin, &hs, 0.0);
        assert!(b.pick(&hs, None, &|_| false).is_none());
    }

    #[test]
    fn least_request_prefers_idle_host() {
        let hs = hosts(&[1, 1]);
        hs[0].active.set(100);
        let b = Balancer::new(LbPolicy::LeastRequest { choices: 2 }, &hs);
        let c = counts(&b, &hs, 1000, |_| None);
        // P2C with two hosts: the busy one wins only when both draws pick it (~25%).
        assert!(c["127.0.0.2:80"] > 650, "{c:?}");
    }

    #[test]
    fn consistent_hashes_are_sticky_and_spread() {
        for policy in [
            LbPolicy::RingHash {
                min_size: 1024,
                max_size: 8 << 20,
            },
            LbPolicy::Maglev { table_size: 65537 },
        ] {
            let hs = hosts(&[1, 1, 1, 1]);
            let b = Balancer::new(policy, &hs);
            for k in 0..50u64 {
                let h = request_hash(&[&k.to_le_bytes()]);
                let a = b.pick(&hs, Some(h), &|_| false).unwrap();
                let again = b.pick(&hs, Some(h), &|_| false).unwrap();
                assert_eq!(a.addr, again.addr);
            }
            let c = counts(&b, &hs, 4000, |i| {
                Some(request_hash(&[&(i as u64).to_le_bytes()]))
            });
            assert_eq!(c.len(), 4, "{policy:?} {c:?}");
            assert!(c.values().all(|v| *v > 600), "{policy:?} {c:?}");
            // Removing one host keeps most keys where they were.
            let fewer: Vec<_> = hs[..3].to_vec();
            let b2 = Balancer::new(policy, &fewer);
            let mut moved = 0;
            for i in 0..1000u64 {
                let h = request_hash(&[&i.to_le_bytes()]);
                let a = b.pick(&hs, Some(h), &|_| false).unwrap();
                let z = b2.pick(&fewer, Some(h), &|_| false).unwrap();
                if a.addr != z.addr && a.addr != hs[3].addr {
                    moved += 1;
                }
            }
            assert!(moved < 150, "{policy:?}: {moved} keys moved");
        }
    }

    #[test]
    fn avoid_predicate_steers_retries() {
        let hs = hosts(&[1, 1]);
        let b = Balancer::new(LbPolicy::RoundRobin, &hs);
        let first = hs[0].addr;
        for _ in 0..10 {
            let h = b.pick(&hs, None, &|h| h.addr == first).unwrap();
            assert_ne!(h.addr, first);
        }
    }
}
