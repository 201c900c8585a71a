//! Cloud-init seeds: NoCloud as small vfat images written in-process with [`fatfs`] (no host
//! tools needed), ConfigDrive as ISO 9660 written with `xorrisofs`/`genisoimage` as KubeVirt does.
//!
//! Two datasources are supported:
//! - [`NoCloud`]: label `CIDATA`, files `user-data`, `meta-data` and optionally `network-config`.
//!   `kib build` uses it to create the build user.
//! - [`ConfigDrive`]: label `config-2`, files `openstack/latest/meta_data.json` (uuid + hostname)
//!   and `openstack/latest/user_data`. This is how CAPK (KubeVirt's `cloudInitConfigDrive`) delivers
//!   bootstrap data, so `kib conformance` boots the image with it.
//!
//! The label is written both in the boot sector and as a volume-label entry in the root directory
//! (as `mkfs.fat -n` does): `blkid`, and so cloud-init's `ds-identify`, reads the latter.

use std::io::{Cursor, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// The FAT attribute of a volume-label directory entry.
const ATTR_VOLUME_ID: u8 = 0x08;

/// Errors while writing a seed image.
#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    /// Formatting the vfat filesystem or writing a file into it failed.
    #[error("Failed to write `{file}` into the {label} seed filesystem")]
    Filesystem {
        /// The volume label of the seed being written.
        label: &'static str,
        /// The file inside the seed (or `/` for the filesystem itself).
        file: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// `xorrisofs`/`genisoimage` failed or is not installed.
    #[error("Failed to write the {label} ISO 9660 seed with `{tool}`: {stderr}")]
    Iso {
        /// The volume label of the seed being written.
        label: &'static str,
        /// The tool (`xorrisofs` or `genisoimage`).
        tool: &'static str,
        /// Its stderr, or why it could not be started.
        stderr: String,
    },
    /// Writing the finished image to disk failed.
    #[error("Failed to write the seed image `{path}`")]
    Write {
        /// The image path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// A NoCloud seed (label `CIDATA`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoCloud {
    /// `meta-data` `instance-id` (cloud-init runs its per-instance modules once per id).
    pub instance_id: String,
    /// `meta-data` `local-hostname`.
    pub hostname: String,
    /// The `user-data` file (usually a `#cloud-config`, see [`build_user_data`]).
    pub user_data: String,
    /// An optional `network-config` file (cloud-init network config v1 or v2).
    pub network_config: Option<String>,
}

impl NoCloud {
    /// A NoCloud seed without `network-config`.
    pub fn new(instance_id: &str, hostname: &str, user_data: impl Into<String>) -> Self {
        Self {
            instance_id: instance_id.to_owned(),
            hostname: hostname.to_owned(),
            user_data: user_data.into(),
            network_config: None,
        }
    }

    /// The contents of `meta-data`.
    pub fn meta_data(&self) -> String {
        // JSON strings are valid YAML scalars, and quote anything YAML would misread.
        format!(
            "instance-id: {}\nlocal-hostname: {}\n",
            serde_json::Value::from(self.instance_id.as_str()),
            serde_json::Value::from(self.hostname.as_str())
        )
    }

    /// Writes the seed image to `path` (see [`Seed::write_image`]).
    pub fn write(&self, path: &Path) -> Result<(), SeedError> {
        Seed::NoCloud(self.clone()).write_image(path)
    }
}

/// An OpenStack ConfigDrive seed (label `config-2`), as CAPK attaches it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigDrive {
    /// The instance uuid (`meta_data.json` `uuid`; cloud-init's instance id).
    pub uuid: String,
    /// The hostname (`meta_data.json` `hostname` and `name`).
    pub hostname: String,
    /// The `openstack/latest/user_data` file.
    pub user_data: String,
}

impl ConfigDrive {
    /// A ConfigDrive seed with a random (version 4) uuid.
    pub fn new(hostname: &str, user_data: impl Into<String>) -> Self {
        Self {
            uuid: random_uuid(),
            hostname: hostname.to_owned(),
            user_data: user_data.into(),
        }
    }

    /// The contents of `openstack/latest/meta_data.json`.
    pub fn meta_data_json(&self) -> String {
        serde_json::json!({
            "uuid": self.uuid,
            "hostname": self.hostname,
            "name": self.hostname,
        })
        .to_string()
    }

    /// Writes the seed image to `path` (see [`Seed::write_image`]).
    pub fn write(&self, path: &Path) -> Result<(), SeedError> {
        Seed::ConfigDrive(self.clone()).write_image(path)
    }
}

/// A cloud-init seed, attached to a VM as a read-only virtio disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seed {
    /// NoCloud (`CIDATA`).
    NoCloud(NoCloud),
    /// OpenStack ConfigDrive (`config-2`).
    ConfigDrive(ConfigDrive),
}

impl From<NoCloud> for Seed {
    fn from(seed: NoCloud) -> Self {
        Seed::NoCloud(seed)
    }
}

impl From<ConfigDrive> for Seed {
    fn from(seed: ConfigDrive) -> Self {
        Seed::ConfigDrive(seed)
    }
}

impl Seed {
    /// The filesystem label cloud-init looks for.
    pub fn label(&self) -> &'static str {
        match self {
            Seed::NoCloud(_) => "CIDATA",
            Seed::ConfigDrive(_) => "config-2",
        }
    }

    /// The files of the seed: (path inside the filesystem, contents).
    pub fn files(&self) -> Vec<(String, String)> {
        match self {
            Seed::NoCloud(s) => {
                let mut files = vec![
                    ("user-data".to_owned(), s.user_data.clone()),
                    ("meta-data".to_owned(), s.meta_data()),
                ];
                if let Some(n) = &s.network_config {
                    files.push(("network-config".to_owned(), n.clone()));
                }
                files
            }
            Seed::ConfigDrive(s) => vec![
                (
                    "openstack/latest/meta_data.json".to_owned(),
                    s.meta_data_json(),
                ),
                ("openstack/latest/user_data".to_owned(), s.user_data.clone()),
            ],
        }
    }

    /// The ISO 9660 volume id KubeVirt gives the seed: `config-2` (ConfigDrive) or `cidata`
    /// (NoCloud).
    pub fn iso_label(&self) -> &'static str {
        match self {
            Seed::NoCloud(_) => "cidata",
            Seed::ConfigDrive(_) => "config-2",
        }
    }

    /// Writes the seed as KubeVirt's virt-launcher does: the files staged in a directory, then
    /// `xorrisofs -output F -volid LABEL -joliet -rock -partition_cyl_align on DIR`
    /// (kubevirt/kubevirt `pkg/cloud-init/cloud-init.go`, `defaultIsoFunc`; older releases
    /// ran `genisoimage` with the same flags, used here when `xorrisofs` is not installed).
    /// Rock Ridge keeps the lower-case `openstack/latest/meta_data.json` names cloud-init
    /// looks for. KubeVirt attaches the file as a raw virtio disk, as the VM layer does.
    pub fn write_iso(&self, path: &Path) -> Result<(), SeedError> {
        let label = self.iso_label();
        let stage_err = |file: &str| {
            let file = file.to_owned();
            move |source| SeedError::Filesystem {
                label,
                file,
                source,
            }
        };
        let stage = tempfile::tempdir().map_err(stage_err("/"))?;
        for (name, contents) in self.files() {
            let p = stage.path().join(&name);
            if let Some(parent) = p.parent() {
                fs_err::create_dir_all(parent).map_err(stage_err(&name))?;
            }
            fs_err::write(&p, contents).map_err(stage_err(&name))?;
        }
        let (tool, extra): (&'static str, &[&str]) = if which("xorrisofs") {
            ("xorrisofs", &["-partition_cyl_align", "on"])
        } else {
            ("genisoimage", &[])
        };
        let out = std::process::Command::new(tool)
            .arg("-quiet")
            .arg("-output")
            .arg(path)
            .args(["-volid", label, "-joliet", "-rock"])
            .args(extra)
            .arg(stage.path())
            .output()
            .map_err(|e| SeedError::Iso {
                label,
                tool,
                stderr: format!("{e} (install xorriso or genisoimage)"),
            })?;
        if !out.status.success() {
            let _ = fs_err::remove_file(path);
            return Err(SeedError::Iso {
                label,
                tool,
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            });
        }
        Ok(())
    }

    /// The raw vfat image of the seed.
    pub fn to_image(&self) -> Result<Vec<u8>, SeedError> {
        let label = self.label();
        let files = self.files();
        let fs_err = |file: &str| {
            let file = file.to_owned();
            move |source| SeedError::Filesystem {
                label,
                file,
                source,
            }
        };
        let content: usize = files.iter().map(|(_, c)| c.len() + 4096).sum();
        // FAT12, 512-byte sectors: 1 MiB of headroom plus twice the content, MiB-aligned.
        let size = (content * 2 + (1 << 20)).div_ceil(1 << 20) * (1 << 20);
        let mut disk = Cursor::new(vec![0u8; size]);
        let mut label_bytes = [b' '; 11];
        label_bytes[..label.len()].copy_from_slice(label.as_bytes());
        fatfs::format_volume(
            &mut disk,
            fatfs::FormatVolumeOptions::new().volume_label(label_bytes),
        )
        .map_err(fs_err("/"))?;
        write_root_dir_label(&mut disk, label_bytes).map_err(fs_err("/"))?;
        disk.set_position(0);
        {
            let fs =
                fatfs::FileSystem::new(&mut disk, fatfs::FsOptions::new()).map_err(fs_err("/"))?;
            for (path, contents) in &files {
                let root = fs.root_dir();
                let mut dir = root;
                let mut parts: Vec<&str> = path.split('/').collect();
                let name = parts.pop().unwrap_or_default();
                for part in parts {
                    dir = match dir.open_dir(part) {
                        Ok(d) => d,
                        Err(_) => dir.create_dir(part).map_err(fs_err(path))?,
                    };
                }
                let mut file = dir.create_file(name).map_err(fs_err(path))?;
                file.truncate().map_err(fs_err(path))?;
                file.write_all(contents.as_bytes()).map_err(fs_err(path))?;
                file.flush().map_err(fs_err(path))?;
            }
            fs.unmount().map_err(fs_err("/"))?;
        }
        Ok(disk.into_inner())
    }

    /// Writes the seed the VM gets to `path` (raw format): a ConfigDrive as ISO 9660, as
    /// KubeVirt writes it ([`Seed::write_iso`]), so an image that cannot read ISO 9660 fails
    /// here as it would in a cluster; a NoCloud seed (kib's own build seed) as vfat, written
    /// in-process ([`Seed::to_image`]): the build seed is kib's means to provision, not a
    /// claim about how KubeVirt boots the image, and needs no host tool.
    pub fn write_image(&self, path: &Path) -> Result<(), SeedError> {
        if matches!(self, Seed::ConfigDrive(_)) {
            return self.write_iso(path);
        }
        let image = self.to_image()?;
        fs_err::write(path, image).map_err(|source| SeedError::Write {
            path: path.to_owned(),
            source,
        })
    }
}

/// Whether `program` is on PATH.
fn which(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(program).is_file()))
}

/// Writes a volume-label entry into the first slot of a freshly formatted FAT12/16 root directory.
fn write_root_dir_label(disk: &mut Cursor<Vec<u8>>, label: [u8; 11]) -> std::io::Result<()> {
    let boot = disk.get_ref();
    let u16_at = |off: usize| u64::from(u16::from_le_bytes([boot[off], boot[off + 1]]));
    let bytes_per_sector = u16_at(0x0B);
    let reserved = u16_at(0x0E);
    let fats = u64::from(boot[0x10]);
    let sectors_per_fat = u16_at(0x16);
    if sectors_per_fat == 0 {
        return Err(std::io::Error::other(
            "seed filesystem unexpectedly formatted as FAT32",
        ));
    }
    let root = (reserved + fats * sectors_per_fat) * bytes_per_sector;
    let mut entry = [0u8; 32];
    entry[..11].copy_from_slice(&label);
    entry[11] = ATTR_VOLUME_ID;
    disk.seek(SeekFrom::Start(root))?;
    disk.write_all(&entry)?;
    disk.seek(SeekFrom::Start(0))?;
    Ok(())
}

/// A random RFC 4122 version 4 uuid.
fn random_uuid() -> String {
    let mut b: [u8; 16] = rand::random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// A `#cloud-config` that creates the build user `user` with passwordless sudo, a locked
/// password, `/bin/bash` and `ssh_public_key`; disables SSH password login; grows the root
/// partition and filesystem. `users:` does not include `default`, so the image's default cloud
/// user (e.g. `rocky`) is not created.
pub fn build_user_data(user: &str, ssh_public_key: &str) -> String {
    render_cloud_config(&build_user_doc(user, ssh_public_key))
}

/// [`build_user_data`] plus the guest's SSH host key, generated on the host: cloud-init's
/// `cc_ssh` installs `ssh_keys.ed25519_private`/`ed25519_public` as
/// `/etc/ssh/ssh_host_ed25519_key{,.pub}` after deleting the image's keys
/// (`ssh_deletekeys: true`) and generates no other type (`ssh_genkeytypes: []`), so sshd
/// offers exactly the key the host pins (issue #16.7; cloud-init docs, module `cc_ssh`:
/// "ssh_keys", "ssh_deletekeys", "ssh_genkeytypes").
pub fn build_user_data_with_host_key(
    user: &str,
    ssh_public_key: &str,
    host_private_openssh: &str,
    host_public_openssh: &str,
) -> String {
    let mut doc = build_user_doc(user, ssh_public_key);
    if let Some(map) = doc.as_object_mut() {
        map.insert(
            "ssh_keys".to_owned(),
            serde_json::json!({
                "ed25519_private": host_private_openssh,
                "ed25519_public": host_public_openssh.trim(),
            }),
        );
        map.insert("ssh_deletekeys".to_owned(), serde_json::json!(true));
        map.insert("ssh_genkeytypes".to_owned(), serde_json::json!([]));
    }
    render_cloud_config(&doc)
}

fn render_cloud_config(doc: &serde_json::Value) -> String {
    // JSON is a subset of YAML 1.2, which cloud-init's YAML loader accepts; it also quotes
    // every string, so no key material can be misread as YAML syntax.
    format!("#cloud-config\n{doc:#}\n")
}

fn build_user_doc(user: &str, ssh_public_key: &str) -> serde_json::Value {
    serde_json::json!({
        "users": [{
            "name": user,
            "sudo": "ALL=(ALL) NOPASSWD:ALL",
            "lock_passwd": true,
            "shell": "/bin/bash",
            "ssh_authorized_keys": [ssh_public_key.trim()],
        }],
        "ssh_pwauth": false,
        "disable_root": true,
        "growpart": {"mode": "auto", "devices": ["/"]},
        "resize_rootfs": true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_data_with_host_key_installs_only_that_key() {
        let ud = build_user_data_with_host_key(
            "kib",
            "ssh-ed25519 AAAA user",
            "-----BEGIN OPENSSH PRIVATE KEY-----\nabc\n-----END OPENSSH PRIVATE KEY-----\n",
            "ssh-ed25519 BBBB host\n",
        );
        let doc: serde_json::Value =
            serde_json::from_str(ud.strip_prefix("#cloud-config\n").unwrap()).unwrap();
        assert_eq!(doc["ssh_keys"]["ed25519_public"], "ssh-ed25519 BBBB host");
        assert!(
            doc["ssh_keys"]["ed25519_private"]
                .as_str()
                .unwrap()
                .contains("BEGIN OPENSSH PRIVATE KEY")
        );
        assert_eq!(doc["ssh_deletekeys"], true);
        assert_eq!(doc["ssh_genkeytypes"], serde_json::json!([]));
        assert_eq!(doc["users"][0]["name"], "kib");
    }
    use std::io::Read;

    fn read_back(image: Vec<u8>) -> (String, Option<String>, Vec<(String, String)>) {
        let fs = fatfs::FileSystem::new(Cursor::new(image), fatfs::FsOptions::new()).unwrap();
        let label = fs.volume_label();
        let root_label = fs.read_volume_label_from_root_dir().unwrap();
        let mut files = Vec::new();
        fn walk<T: fatfs::ReadWriteSeek>(
            dir: fatfs::Dir<'_, T>,
            prefix: &str,
            out: &mut Vec<(String, String)>,
        ) {
            for e in dir.iter() {
                let e = e.unwrap();
                let name = e.file_name();
                if name == "." || name == ".." {
                    continue;
                }
                let path = format!("{prefix}{name}");
                if e.is_dir() {
                    walk(e.to_dir(), &format!("{path}/"), out);
                } else {
                    let mut s = String::new();
                    e.to_file().read_to_string(&mut s).unwrap();
                    out.push((path, s));
                }
            }
        }
        walk(fs.root_dir(), "", &mut files);
        files.sort();
        (label, root_label, files)
    }

    #[test]
    fn nocloud_image_has_label_and_files() {
        let mut seed = NoCloud::new(
            "iid-1",
            "kib-build",
            build_user_data("kib", "ssh-ed25519 AAAA k"),
        );
        seed.network_config = Some("version: 2\n".to_owned());
        let seed = Seed::from(seed);
        let (label, root_label, files) = read_back(seed.to_image().unwrap());
        assert_eq!(label, "CIDATA");
        assert_eq!(root_label.as_deref(), Some("CIDATA"));
        let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["meta-data", "network-config", "user-data"]);
        assert_eq!(
            files[0].1,
            "instance-id: \"iid-1\"\nlocal-hostname: \"kib-build\"\n"
        );
        assert_eq!(files[1].1, "version: 2\n");
        assert!(files[2].1.starts_with("#cloud-config\n"));
    }

    #[test]
    fn configdrive_image_has_label_and_openstack_files() {
        let seed = ConfigDrive::new("capk-node", "#cloud-config\n{}\n");
        let uuid = seed.uuid.clone();
        let (label, root_label, files) = read_back(Seed::from(seed).to_image().unwrap());
        assert_eq!(label, "config-2");
        assert_eq!(root_label.as_deref(), Some("config-2"));
        assert_eq!(files.len(), 2);
        assert_eq!(files[0].0, "openstack/latest/meta_data.json");
        let meta: serde_json::Value = serde_json::from_str(&files[0].1).unwrap();
        assert_eq!(meta["uuid"], uuid.as_str());
        assert_eq!(meta["hostname"], "capk-node");
        assert_eq!(
            files[1],
            (
                "openstack/latest/user_data".to_owned(),
                "#cloud-config\n{}\n".to_owned()
            )
        );
    }

    #[test]
    fn large_user_data_fits() {
        let big = "x".repeat(3 << 20);
        let seed = Seed::from(ConfigDrive::new("h", big.clone()));
        let (_, _, files) = read_back(seed.to_image().unwrap());
        assert_eq!(files[1].1.len(), big.len());
    }

    #[test]
    fn uuid_is_v4_shaped() {
        let u = random_uuid();
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
        assert_ne!(u, random_uuid());
    }

    #[test]
    fn blkid_reads_the_label() {
        // util-linux's blkid is what cloud-init's ds-identify uses to find the seed.
        let dir = tempfile::tempdir().unwrap();
        for (seed, fs) in [
            (
                Seed::from(NoCloud::new("i", "h", "#cloud-config\n")),
                "vfat",
            ),
            (
                Seed::from(ConfigDrive::new("h", "#cloud-config\n")),
                "iso9660",
            ),
        ] {
            let path = dir.path().join("seed.img");
            seed.write_image(&path).unwrap();
            let out = std::process::Command::new("blkid")
                .args(["-p", "-o", "export"])
                .arg(&path)
                .output()
                .expect("blkid (util-linux) must be installed");
            let out = String::from_utf8_lossy(&out.stdout);
            assert!(out.contains(&format!("LABEL={}\n", seed.label())), "{out}");
            assert!(out.contains(&format!("TYPE={fs}\n")), "{out}");
        }
    }

    #[test]
    fn user_data_is_cloud_config_yaml() {
        let ud = build_user_data("kib", "ssh-ed25519 AAAAC3Nza key: with # yaml chars\n");
        assert!(ud.starts_with("#cloud-config\n"));
        let v: serde_yaml::Value = serde_yaml::from_str(&ud).unwrap();
        let users = v["users"].as_sequence().unwrap();
        assert_eq!(users.len(), 1, "no `default` user");
        let u = &users[0];
        assert_eq!(u["name"].as_str(), Some("kib"));
        assert_eq!(u["sudo"].as_str(), Some("ALL=(ALL) NOPASSWD:ALL"));
        assert_eq!(u["lock_passwd"].as_bool(), Some(true));
        assert_eq!(u["shell"].as_str(), Some("/bin/bash"));
        assert_eq!(
            u["ssh_authorized_keys"][0].as_str(),
            Some("ssh-ed25519 AAAAC3Nza key: with # yaml chars")
        );
        assert_eq!(v["ssh_pwauth"].as_bool(), Some(false));
        assert_eq!(v["resize_rootfs"].as_bool(), Some(true));
        assert_eq!(v["growpart"]["mode"].as_str(), Some("auto"));
    }

    /// What the VM gets for a ConfigDrive is an ISO 9660 `config-2` volume with the
    /// `openstack/latest/` layout (read back with blkid and isoinfo, both from the host).
    #[test]
    fn configdrive_is_written_as_iso9660_config_2() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seed.img");
        let seed = Seed::from(ConfigDrive::new("kib-iso", "#cloud-config\n"));
        seed.write_image(&path).unwrap();
        let blkid = std::process::Command::new("blkid")
            .args(["-p", "-o", "export"])
            .arg(&path)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&blkid.stdout);
        assert!(text.contains("TYPE=iso9660"), "{text}");
        assert!(text.contains("LABEL=config-2"), "{text}");
        let read = |file: &str| {
            let out = std::process::Command::new("isoinfo")
                .args(["-R", "-i"])
                .arg(&path)
                .args(["-x", file])
                .output()
                .unwrap();
            String::from_utf8(out.stdout).unwrap()
        };
        assert_eq!(read("/openstack/latest/user_data"), "#cloud-config\n");
        let meta: serde_json::Value =
            serde_json::from_str(&read("/openstack/latest/meta_data.json")).unwrap();
        assert_eq!(meta["hostname"], "kib-iso");
    }
}
