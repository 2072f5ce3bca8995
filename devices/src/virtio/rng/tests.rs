//! Tests of [`super::VirtioRng`] through the virtio-pci transport.

use std::path::Path;

use pci::device::PciDevice;
use vm_memory::{Bytes, GuestAddress};

use super::*;
use crate::virtio::test_driver::{Buf, Driver, TempImage, DATA};

fn started(source: File) -> Driver {
    let mut d = Driver::new(Box::new(VirtioRng::from_file(source)));
    d.start();
    d
}

#[test]
fn offers_version_1_only_and_has_the_rng_device_id() {
    let mut d = Driver::new(Box::new(
        VirtioRng::open(Path::new("/dev/urandom")).unwrap(),
    ));
    assert_eq!(d.device_features(), features::VERSION_1);
    assert_eq!(d.dev.read_config(0) >> 16, 0x1044);
}

#[test]
fn every_writable_buffer_of_a_chain_is_filled_from_the_source() {
    let content: Vec<u8> = (1..=200u8).collect();
    let src = TempImage::new(&content);
    let mut d = started(File::open(&src.0).unwrap());
    d.mem.write_slice(&[0; 64], GuestAddress(DATA)).unwrap();
    let (_, len) = d.complete(&[Buf(DATA, 16, true), Buf(DATA + 0x100, 32, true)]);
    assert_eq!(len, 48);
    assert_eq!(d.mem_read(DATA, 16), content[..16]);
    assert_eq!(d.mem_read(DATA + 0x100, 32), content[16..48]);
    // The next request continues in the source; at its end, a short answer.
    let (_, len) = d.complete(&[Buf(DATA, 200, true)]);
    assert_eq!(len, 152);
    assert_eq!(d.mem_read(DATA, 152), content[48..]);
}

#[test]
fn urandom_gives_nonzero_bytes() {
    let mut d = started(File::open("/dev/urandom").unwrap());
    d.mem.write_slice(&[0; 256], GuestAddress(DATA)).unwrap();
    let (_, len) = d.complete(&[Buf(DATA, 256, true)]);
    assert_eq!(len, 256);
    assert!(d.mem_read(DATA, 256).iter().any(|&b| b != 0));
}

#[test]
fn a_request_is_capped() {
    let mut d = started(File::open("/dev/zero").unwrap());
    let (_, len) = d.complete(&[Buf(DATA, 1 << 20, true)]);
    assert_eq!(len as usize, MAX_BYTES_PER_REQUEST);
}

#[test]
fn bad_descriptors_complete_empty_and_the_device_keeps_working() {
    let mut d = started(File::open("/dev/urandom").unwrap());
    d.mem.write_slice(&[0; 32], GuestAddress(DATA)).unwrap();
    // A device-readable buffer in the chain: nothing is written, even to the writable one.
    let (_, len) = d.complete(&[Buf(DATA, 16, false), Buf(DATA + 16, 16, true)]);
    assert_eq!(len, 0);
    assert_eq!(d.mem_read(DATA, 32), [0; 32]);
    // A buffer outside guest memory.
    let (_, len) = d.complete(&[Buf(1 << 40, 16, true)]);
    assert_eq!(len, 0);
    let (_, len) = d.complete(&[Buf(DATA, 32, true)]);
    assert_eq!(len, 32);
}

#[test]
fn a_missing_source_is_an_error_naming_it() {
    let e = VirtioRng::open(Path::new("/nonexistent/rng"))
        .err()
        .unwrap();
    let msg = e.to_string();
    assert!(msg.contains("/nonexistent/rng"), "{msg}");
    assert!(msg.contains("No such file"), "{msg}");
}
