//! Route-selection time: Sluice's route engine on a table of 10 routes against one of 10,000
//! (issue: matching must stay fast as tables grow). Pure CPU, no network: the same requests,
//! spread over every kind of route (exact, case-insensitive, prefix, header-conditioned,
//! path-separated prefix, regex, and the catch-all), are selected repeatedly.

use std::time::{Duration, Instant};

use sluice::route::vhost::large_config;
use sluice::route::{RequestView, RouteTable};

/// One table size's figures.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RouteFigure {
    pub routes: usize,
    pub build_ms: f64,
    /// Median over repetitions of the mean selection time.
    pub select_ns: f64,
    pub requests: usize,
}

/// A path that matches route `i` of `large_config`'s table (or falls to the catch-all).
fn path_for(i: usize) -> String {
    match i % 10 {
        0..=3 => format!("/svc/{}", i / 2),
        4 => format!("/ci/{i}"),
        5..=7 => format!("/svc/{}/item", i / 3),
        8 => format!("/sep/{}/x", i / 4),
        _ => format!("/re/{}/12345", i / 5),
    }
}

/// Measures route selection on a table of `n` routes.
pub fn measure(n: usize, reps: usize, per_rep: Duration) -> RouteFigure {
    let t0 = Instant::now();
    let table = RouteTable::from_proto(&large_config(n)).expect("large config compiles");
    let build_ms = t0.elapsed().as_secs_f64() * 1e3;
    let mut paths: Vec<String> = (0..100).map(|k| path_for(k * n / 100)).collect();
    paths.push("/no/such/route".into());
    let reqs: Vec<http::request::Parts> = paths
        .iter()
        .map(|p| {
            http::Request::get(p.as_str())
                .header("host", "example.com")
                .body(())
                .unwrap()
                .into_parts()
                .0
        })
        .collect();
    let mut samples = Vec::new();
    for _ in 0..reps {
        let start = Instant::now();
        let mut count = 0usize;
        while start.elapsed() < per_rep {
            for (k, parts) in reqs.iter().enumerate() {
                let view = RequestView::from_parts(parts);
                let sel = table.select(&view, k as u64);
                std::hint::black_box(&sel);
                count += 1;
            }
        }
        samples.push(start.elapsed().as_nanos() as f64 / count as f64);
    }
    samples.sort_by(|a, b| a.total_cmp(b));
    RouteFigure {
        routes: n,
        build_ms,
        select_ns: samples[samples.len() / 2],
        requests: reqs.len(),
    }
}

/// Markdown for the report.
pub fn markdown(small: &RouteFigure, large: &RouteFigure, command: &str) -> String {
    format!(
        "`{command}`\n\n# Route selection: {} routes against {}\n\n\
| routes | compile table | select (median ns per request) |\n|---:|---:|---:|\n\
| {} | {:.2} ms | {:.0} |\n| {} | {:.2} ms | {:.0} |\n\n\
Ratio, {} routes / {} routes: **{:.2}x** per selection. Requests spread over every route kind \
(exact, case-insensitive exact, prefix, header-conditioned prefix, path-separated prefix, regex) \
and positions in the table, plus one that falls through to the catch-all.\n",
        large.routes,
        small.routes,
        small.routes,
        small.build_ms,
        small.select_ns,
        large.routes,
        large.build_ms,
        large.select_ns,
        large.routes,
        small.routes,
        large.select_ns / small.select_ns
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_sample_path_selects_its_route_or_the_catch_all() {
        let table = RouteTable::from_proto(&large_config(1000)).unwrap();
        for k in 0..100 {
            let i = k * 10;
            let parts = http::Request::get(path_for(i).as_str())
                .header("host", "h")
                .body(())
                .unwrap()
                .into_parts()
                .0;
            let sel = table.select(&RequestView::from_parts(&parts), 0);
            assert!(sel.route().is_some(), "{}", path_for(i));
        }
        let f = measure(10, 1, Duration::from_millis(5));
        assert!(f.select_ns > 0.0);
    }
}
