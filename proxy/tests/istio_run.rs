//! `sluice run --config-dir`: the docs example translates cleanly, and edits to the directory
//! apply live through State.

use std::path::PathBuf;
use std::time::Duration;

use sluice::istio::{self, Interception, Level, Node};
use sluice::state::State;

fn example() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/examples/bookinfo")
}

fn node() -> Node {
    Node {
        interception: Interception::None,
        ..Node::sidecar("default")
    }
}

#[test]
fn docs_example_translates_without_problems() {
    let r = istio::translate_dir(&example(), &node()).unwrap();
    let bad: Vec<_> = r
        .messages
        .iter()
        .filter(|m| m.level != Level::Info)
        .collect();
    assert!(bad.is_empty(), "{bad:#?}");
    assert!(r.skipped.is_empty());
    assert!(r.listener("127.0.0.1_9080").is_some());
    assert_eq!(
        r.endpoints.len(),
        4 + 8,
        "one assignment per service and per subset"
    );
}

fn reviews_default_cluster(st: &State) -> Option<String> {
    let snap = st.load();
    let rc = snap.routes.get("9080")?.proto();
    let vh = rc
        .virtual_hosts
        .iter()
        .find(|v| v.name == "reviews.default.svc.cluster.local:9080")?;
    let j = sluice::config::proto::to_json(vh.routes.last()?);
    j["route"]["cluster"].as_str().map(String::from)
}

#[tokio::test]
async fn directory_edits_apply_live() {
    let dir = std::env::temp_dir().join(format!("sluice-istio-run-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for f in istio::load::config_files(&example()).unwrap() {
        std::fs::copy(&f, dir.join(f.file_name().unwrap())).unwrap();
    }
    let st = State::new();
    let task = tokio::spawn(istio::run::watch(
        st.clone(),
        dir.clone(),
        node(),
        Duration::from_millis(50),
    ));
    let wait_for = |want: &'static str| {
        let st = st.clone();
        async move {
            for _ in 0..100 {
                if reviews_default_cluster(&st).as_deref() == Some(want) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            panic!("never saw {want}: {:?}", reviews_default_cluster(&st));
        }
    };
    wait_for("outbound|9080|v1|reviews.default.svc.cluster.local").await;
    let vs = dir.join("virtual-services.yaml");
    let text = std::fs::read_to_string(&vs).unwrap();
    let edited = text.replacen("        subset: v1\n---", "        subset: v3\n---", 1);
    assert_ne!(text, edited);
    std::fs::write(&vs, edited).unwrap();
    wait_for("outbound|9080|v3|reviews.default.svc.cluster.local").await;
    // A broken edit rejects only the broken resource: the rest keeps applying.
    std::fs::write(dir.join("broken.yaml"), "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: x}\nspec: {hosts: [x], http: [{route: [{destination: {host: x}}], match: [{uri: {regex: '('}}]}]}\n").unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        reviews_default_cluster(&st).as_deref(),
        Some("outbound|9080|v3|reviews.default.svc.cluster.local")
    );
    task.abort();
    let _ = std::fs::remove_dir_all(&dir);
}
