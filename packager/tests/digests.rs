//! The digests of a fixed input, pinned: recorded with the two-pass publish (hash, then a
//! monolithic PUT) before the one-pass upload replaced it, so the same qcow2 and metadata keep
//! giving the same layer digest, diff_id and image digest. Registry-free; the registry tests
//! check that a push stores exactly these digests.

#[path = "common/pinned.rs"]
mod pinned;

use kib_packager::image::prepare;
use kib_packager::layer::{LayerSpec, write_layer};
use pinned::{PINNED, fixed_disk, fixed_metadata};

#[test]
fn the_digests_of_a_fixed_input_never_change() {
    let disk = fixed_disk();
    let computed: Vec<_> = PINNED
        .iter()
        .map(|(compression, ..)| {
            let spec = LayerSpec::new(disk.path(), 1_790_000_000, *compression);
            let layer = write_layer(&spec, std::io::sink(), &mut |_| {}).unwrap();
            let image = prepare(layer.clone(), *compression, &fixed_metadata());
            println!(
                "({compression:?}, \"{}\", \"{}\", \"{}\"),",
                layer.digest, layer.diff_id, image.manifest_digest
            );
            (
                *compression,
                layer.digest,
                layer.diff_id,
                image.manifest_digest,
            )
        })
        .collect();
    for ((c, l, d, m), (_, pl, pd, pm)) in computed.iter().zip(PINNED) {
        assert_eq!((l.as_str(), d.as_str(), m.as_str()), (pl, pd, pm), "{c:?}");
    }
}
