//! The `cluster` profile end to end: kind + KubeVirt + CDI + Cluster API + CAPK, a workload
//! cluster booting the published image and running a pod. Needs internet, docker or podman, kind, kubectl and
//! clusterctl (see README.md); run by name:
//! `KIB_CONFORMANCE_IMAGE=… KIB_CONFORMANCE_K8S=… cargo test -p kib-conformance -- --ignored cluster`.

use std::time::Duration;

use kib_conformance::cluster::{ClusterSpec, plan, run_step, teardown};
use kib_manifest::Hint as _;

#[tokio::test]
#[ignore = "needs internet: kind, KubeVirt, CDI, Cluster API and CAPK releases plus the image's registry"]
async fn cluster_profile_boots_a_workload_cluster_from_the_image() {
    let image = std::env::var("KIB_CONFORMANCE_IMAGE")
        .expect("set KIB_CONFORMANCE_IMAGE to the published image reference");
    let k8s = std::env::var("KIB_CONFORMANCE_K8S")
        .expect("set KIB_CONFORMANCE_K8S to the image's Kubernetes version");
    let spec = ClusterSpec::new(&image, &k8s);
    let steps = plan(&spec, None);
    let mut result = Ok(());
    for step in &steps {
        if let Err(e) = run_step(step, None, Duration::from_secs(60 * 60)).await {
            result = Err(format!("{e}; hint: {:?}", e.hint()));
            break;
        }
    }
    // Stops the API port-forward and deletes the kind cluster, whatever happened.
    for step in teardown(&spec, None, false) {
        let _ = run_step(&step, None, Duration::from_secs(10 * 60)).await;
    }
    result.unwrap();
}
