//! Boot tests: each test recipe is built once per run, the real media are
//! booted under QEMU (KVM when it works, else TCG) and every promise is
//! judged from outside the guest: the serial console, the debug console on
//! ttyS1, loopback listeners, and the disk image file on the host.

mod boot {
    pub mod airgap;
    pub mod amnesia;
    pub mod audit;
    pub mod bigmodel;
    pub mod failclosed;
    pub mod grow;
    pub mod identity;
    pub mod images;
    pub mod k3s;
    pub mod kubernetes;
    pub mod media;
    pub mod multinode;
    pub mod production;
    pub mod raw;
    pub mod secureboot;
    pub mod shim;
    pub mod site;
    pub mod template;
    pub mod volumes;
    pub mod workloads;
}
