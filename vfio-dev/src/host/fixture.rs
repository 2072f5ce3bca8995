//! Test fixtures: a host tree (`sys`, `proc`, `dev`, `run`) in a temporary directory, laid out
//! like the real ones, and [`KernelSim`], a [`SysfsWriter`] that records every write and plays
//! the kernel's part on the tree (binding drivers, enabling VFs, creating mdevs), with errno
//! injection.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fs;
use std::io;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use super::{HostBdf, HostPaths, SysfsWriter};
use crate::sysfs::tests::FakeSysfs;

pub(crate) const GPU: (u16, u16, u32) = (0x10de, 0x2204, 0x030000);
pub(crate) const GPU_AUDIO: (u16, u16, u32) = (0x10de, 0x1aef, 0x040300);
pub(crate) const NIC_PF: (u16, u16, u32) = (0x8086, 0x1521, 0x020000);
pub(crate) const NIC_VF: (u16, u16, u32) = (0x8086, 0x1520, 0x020000);
pub(crate) const BRIDGE: (u16, u16, u32) = (0x8086, 0x1901, 0x060400);
pub(crate) const NVME: (u16, u16, u32) = (0x1b36, 0x0010, 0x010802);
pub(crate) const T4: (u16, u16, u32) = (0x10de, 0x1eb8, 0x030200);

/// A host tree in a temporary directory, removed on drop.
pub(crate) struct Fixture {
    pub(crate) base: PathBuf,
    pub(crate) paths: HostPaths,
    sysfs: FakeSysfs,
}

static NEXT: AtomicUsize = AtomicUsize::new(0);

fn touch(path: &Path, content: &str) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, content).unwrap();
}

impl Fixture {
    pub(crate) fn new() -> Self {
        let base = std::env::temp_dir().join(format!(
            "viaduct-host-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = fs::remove_dir_all(&base);
        let paths = HostPaths::under(&base);
        for dir in ["bus/pci/devices", "bus/mdev/devices", "kernel/iommu_groups"] {
            fs::create_dir_all(paths.sys.join(dir)).unwrap();
        }
        fs::create_dir_all(&paths.dev).unwrap();
        touch(&paths.sys.join("bus/pci/drivers_probe"), "");
        touch(
            &paths.proc.join("sys/kernel/random/uuid"),
            "9b0e4c1d-2f3a-4b5c-8d6e-7f8091a2b3c4\n",
        );
        touch(&paths.proc.join("self/mountinfo"), "");
        let sysfs = FakeSysfs {
            root: paths.sys.clone(),
        };
        Fixture { base, paths, sysfs }
    }

    pub(crate) fn bdf(s: &str) -> HostBdf {
        s.parse().unwrap()
    }

    /// Registers PCI driver `name` (its directory with `bind` and `unbind`).
    pub(crate) fn driver(&self, name: &str) -> &Self {
        let dir = self.paths.pci_driver(name);
        touch(&dir.join("bind"), "");
        touch(&dir.join("unbind"), "");
        self
    }

    /// Adds a PCI function; its driver is registered too.
    pub(crate) fn pci(
        &self,
        bdf: &str,
        ids: (u16, u16, u32),
        driver: Option<&str>,
        group: Option<u32>,
    ) -> PathBuf {
        if let Some(d) = driver {
            self.driver(d);
        }
        let dir = self.sysfs.add_pci(bdf, ids, driver, group);
        touch(&dir.join("driver_override"), "(null)\n");
        dir
    }

    /// Makes `pf` an SR-IOV PF with `total` VFs possible and `vfs` enabled, each VF a function
    /// with a `physfn` link (VFs are added with their own group, on `vf_driver`).
    pub(crate) fn sriov(&self, pf: &str, total: u32, vfs: &[&str], first_group: u32) {
        let pf_dir = self.paths.sys.join("devices/pci0000:00").join(pf);
        touch(&pf_dir.join("sriov_totalvfs"), &format!("{total}\n"));
        touch(&pf_dir.join("sriov_numvfs"), &format!("{}\n", vfs.len()));
        for (n, vf) in vfs.iter().enumerate() {
            let vf_dir = self.pci(vf, NIC_VF, Some("igbvf"), Some(first_group + n as u32));
            symlink(&vf_dir, pf_dir.join(format!("virtfn{n}"))).unwrap();
            symlink(&pf_dir, vf_dir.join("physfn")).unwrap();
        }
    }

    /// Gives `parent` the mdev type `id` with `name` and `available` instances.
    pub(crate) fn mdev_type(&self, parent: &str, id: &str, name: &str, available: u32) {
        let dir = self
            .paths
            .sys
            .join("devices/pci0000:00")
            .join(parent)
            .join("mdev_supported_types")
            .join(id);
        touch(&dir.join("name"), &format!("{name}\n"));
        touch(&dir.join("available_instances"), &format!("{available}\n"));
        touch(&dir.join("device_api"), "vfio-pci\n");
        touch(&dir.join("create"), "");
    }

    /// Puts the host's root filesystem on partition `part` (block device `maj:min`) of the NVMe
    /// controller `bdf`, optionally through a device-mapper volume `dm-0` (`254:0`).
    pub(crate) fn root_on(&self, bdf: &str, part: &str, majmin: &str, through_dm: bool) {
        let disk = part.trim_end_matches(|c: char| c.is_ascii_digit());
        let disk = disk.strip_suffix('p').unwrap_or(disk);
        let part_dir = self
            .paths
            .sys
            .join("devices/pci0000:00")
            .join(bdf)
            .join("nvme/nvme0")
            .join(disk)
            .join(part);
        touch(&part_dir.join("dev"), &format!("{majmin}\n"));
        fs::create_dir_all(self.paths.sys.join("dev/block")).unwrap();
        fs::create_dir_all(self.paths.sys.join("class/block")).unwrap();
        symlink(&part_dir, self.paths.sys.join("dev/block").join(majmin)).unwrap();
        symlink(&part_dir, self.paths.sys.join("class/block").join(part)).unwrap();
        let root_majmin = if through_dm {
            let dm = self.paths.sys.join("devices/virtual/block/dm-0");
            touch(&dm.join("dev"), "254:0\n");
            fs::create_dir_all(dm.join("slaves")).unwrap();
            symlink(&part_dir, dm.join("slaves").join(part)).unwrap();
            symlink(&dm, self.paths.sys.join("dev/block/254:0")).unwrap();
            "254:0"
        } else {
            majmin
        };
        touch(
            &self.paths.proc.join("self/mountinfo"),
            &format!(
                "21 1 0:20 / /sys rw,nosuid - sysfs sysfs rw\n\
                 1 0 {root_majmin} / / rw,relatime shared:1 - ext4 /dev/root rw\n\
                 30 1 0:25 / /run rw - tmpfs tmpfs rw\n"
            ),
        );
    }

    /// Everything `viaduct check` looks for on a ready Intel host.
    pub(crate) fn ready_host(&self) {
        let sys = &self.paths.sys;
        touch(&sys.join("firmware/acpi/tables/DMAR"), "DMAR");
        touch(&sys.join("class/iommu/dmar0/intel-iommu/ecap"), "f0205e\n");
        for m in ["vfio", "vfio_pci", "vfio_iommu_type1"] {
            fs::create_dir_all(sys.join("module").join(m)).unwrap();
        }
        touch(
            &sys.join("module/vfio_iommu_type1/parameters/allow_unsafe_interrupts"),
            "N\n",
        );
        self.driver("vfio-pci");
        touch(&self.paths.dev.join("kvm"), "");
        touch(&self.paths.dev.join("vfio/vfio"), "");
        touch(
            &self.paths.proc.join("interrupts"),
            "           CPU0\n 24:  12  IR-PCI-MSI 512000-edge  nvme0q0\n",
        );
        touch(
            &self.paths.proc.join("self/status"),
            "Name:\tviaduct\nCapEff:\t000001ffffffffff\n",
        );
        touch(
            &self.paths.proc.join("meminfo"),
            "MemTotal:       16384000 kB\nHugepagesize:       2048 kB\n",
        );
        self.hugepages(2048, 1024, 1024);
    }

    /// A hugepage pool of `kib`-KiB pages with `total` pages, `free` of them free.
    pub(crate) fn hugepages(&self, kib: u64, total: u64, free: u64) {
        let dir = self
            .paths
            .sys
            .join(format!("kernel/mm/hugepages/hugepages-{kib}kB"));
        touch(&dir.join("nr_hugepages"), &format!("{total}\n"));
        touch(&dir.join("free_hugepages"), &format!("{free}\n"));
        touch(&dir.join("resv_hugepages"), "0\n");
    }

    /// Creates `/dev/vfio/<group>`.
    pub(crate) fn vfio_group_node(&self, group: u32) {
        touch(&self.paths.dev.join("vfio").join(group.to_string()), "");
    }

    /// The driver `bdf` is bound to now.
    pub(crate) fn driver_of(&self, bdf: &str) -> Option<String> {
        fs::read_link(
            self.paths
                .sys
                .join("bus/pci/devices")
                .join(bdf)
                .join("driver"),
        )
        .ok()
        .map(|t| t.file_name().unwrap().to_string_lossy().into_owned())
    }

    pub(crate) fn override_of(&self, bdf: &str) -> String {
        fs::read_to_string(
            self.paths
                .sys
                .join("bus/pci/devices")
                .join(bdf)
                .join("driver_override"),
        )
        .unwrap()
        .trim()
        .to_string()
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.base);
    }
}

/// Plays the kernel's part for writes into a [`Fixture`]'s sysfs and records them.
pub(crate) struct KernelSim {
    sys: PathBuf,
    /// Every write: the file relative to the sysfs root, and the value.
    pub(crate) writes: RefCell<Vec<(String, String)>>,
    /// Errno to answer the next write to a file whose relative path ends with the key.
    fail: RefCell<HashMap<String, i32>>,
    /// The driver `drivers_probe` picks for a device without an override.
    native: HashMap<String, String>,
}

impl KernelSim {
    pub(crate) fn new(fixture: &Fixture) -> Self {
        KernelSim {
            sys: fixture.paths.sys.clone(),
            writes: RefCell::new(Vec::new()),
            fail: RefCell::new(HashMap::new()),
            native: HashMap::new(),
        }
    }

    /// `drivers_probe` binds `bdf` to `driver` when it has no override.
    pub(crate) fn native(mut self, bdf: &str, driver: &str) -> Self {
        self.native.insert(bdf.to_string(), driver.to_string());
        self
    }

    /// The next write to a file ending in `suffix` fails with `errno`.
    pub(crate) fn fail_next(&self, suffix: &str, errno: i32) {
        self.fail.borrow_mut().insert(suffix.to_string(), errno);
    }

    /// The writes so far, as `file=value` with the value trimmed.
    pub(crate) fn log(&self) -> Vec<String> {
        self.writes
            .borrow()
            .iter()
            .map(|(f, v)| format!("{f}={}", v.trim_end()))
            .collect()
    }

    fn device(&self, bdf: &str) -> PathBuf {
        self.sys.join("bus/pci/devices").join(bdf)
    }

    fn link_driver(&self, bdf: &str, driver: &str) -> io::Result<()> {
        let drv = self.sys.join("bus/pci/drivers").join(driver);
        if !drv.is_dir() {
            return Err(io::Error::from_raw_os_error(libc::ENODEV));
        }
        symlink(drv, self.device(bdf).join("driver"))
    }

    fn override_of(&self, bdf: &str) -> Option<String> {
        fs::read_to_string(self.device(bdf).join("driver_override"))
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty() && s != "(null)")
    }
}

impl SysfsWriter for KernelSim {
    fn write(&self, file: &Path, value: &str) -> io::Result<()> {
        let rel = file
            .strip_prefix(&self.sys)
            .unwrap_or(file)
            .to_string_lossy()
            .into_owned();
        self.writes
            .borrow_mut()
            .push((rel.clone(), value.to_string()));
        let failing = self
            .fail
            .borrow()
            .keys()
            .find(|k| rel.ends_with(k.as_str()))
            .cloned();
        if let Some(key) = failing {
            let errno = self.fail.borrow_mut().remove(&key).unwrap();
            return Err(io::Error::from_raw_os_error(errno));
        }
        if !file.exists() {
            return Err(io::Error::from_raw_os_error(libc::ENOENT));
        }
        let v = value.trim();
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        match name.as_str() {
            "driver_override" => fs::write(file, if v.is_empty() { "(null)\n" } else { value }),
            "unbind" => {
                let link = self.device(v).join("driver");
                let bound = fs::canonicalize(&link).ok();
                if bound != fs::canonicalize(file.parent().unwrap()).ok() {
                    return Err(io::Error::from_raw_os_error(libc::ENODEV));
                }
                fs::remove_file(link)
            }
            "bind" => {
                let driver = fs::canonicalize(file.parent().unwrap())?;
                let driver = driver.file_name().unwrap().to_string_lossy().into_owned();
                if self.device(v).join("driver").exists() {
                    return Err(io::Error::from_raw_os_error(libc::EBUSY));
                }
                match self.override_of(v) {
                    Some(o) if o != driver => Err(io::Error::from_raw_os_error(libc::ENODEV)),
                    _ => self.link_driver(v, &driver),
                }
            }
            "drivers_probe" => {
                if self.device(v).join("driver").exists() {
                    return Ok(());
                }
                match self.override_of(v).or_else(|| self.native.get(v).cloned()) {
                    Some(d) => self.link_driver(v, &d).or(Ok(())),
                    None => Ok(()),
                }
            }
            "sriov_numvfs" => {
                let dir = file.parent().unwrap();
                let n: u32 = v
                    .parse()
                    .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
                let total: u32 = fs::read_to_string(dir.join("sriov_totalvfs"))?
                    .trim()
                    .parse()
                    .unwrap();
                let now: u32 = fs::read_to_string(file)?.trim().parse().unwrap();
                if n > total {
                    return Err(io::Error::from_raw_os_error(libc::ERANGE));
                }
                if n != 0 && now != 0 && n != now {
                    return Err(io::Error::from_raw_os_error(libc::EBUSY));
                }
                fs::write(file, format!("{n}\n"))
            }
            "create" => {
                let type_dir = file.parent().unwrap();
                let parent = type_dir.parent().unwrap().parent().unwrap();
                let mdev = parent.join(v);
                if mdev.exists() {
                    return Err(io::Error::from_raw_os_error(libc::EEXIST));
                }
                fs::create_dir_all(&mdev)?;
                symlink(type_dir, mdev.join("mdev_type"))?;
                fs::write(mdev.join("remove"), "")?;
                symlink(&mdev, self.sys.join("bus/mdev/devices").join(v))?;
                let avail = type_dir.join("available_instances");
                let n: u32 = fs::read_to_string(&avail)?.trim().parse().unwrap();
                fs::write(avail, format!("{}\n", n.saturating_sub(1)))
            }
            "remove" => {
                let mdev = fs::canonicalize(file.parent().unwrap())?;
                let uuid = mdev.file_name().unwrap().to_owned();
                fs::remove_file(self.sys.join("bus/mdev/devices").join(uuid))?;
                fs::remove_dir_all(mdev)
            }
            _ => fs::write(file, value),
        }
    }
}
