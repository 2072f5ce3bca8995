//! A firmware stand-in at the reset vector: real-mode code that writes the ACPI reset value to
//! the ACPI reset register, so a guest that reboots by jumping to F000:FFF0 (Linux's `BOOT_BIOS`
//! method, which it reaches on hardware-reduced ACPI without EFI) reboots instead of running
//! zeroed memory forever.

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use super::BootError;
use crate::layout;

/// The stub: `mov al, RESET_VALUE; mov dx, ACPI_PM_PORT; out dx, al; hlt; jmp hlt`.
pub fn reset_vector_stub() -> [u8; 9] {
    let [port_lo, port_hi] = layout::ACPI_PM_PORT.to_le_bytes();
    [
        0xB0,
        layout::ACPI_RESET_VALUE, // mov al, imm8
        0xBA,
        port_lo,
        port_hi, // mov dx, imm16
        0xEE,    // out dx, al
        0xF4,    // hlt
        0xEB,
        0xFD, // jmp back to hlt
    ]
}

/// Writes the stub at `layout::RESET_VECTOR`.
pub fn write_reset_vector<M: GuestMemoryBackend>(mem: &M) -> Result<(), BootError> {
    mem.write_slice(&reset_vector_stub(), GuestAddress(layout::RESET_VECTOR))
        .map_err(|e| BootError::GuestWrite {
            what: "reset-vector stub",
            detail: e.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stub_writes_the_reset_value_to_the_acpi_port_and_fits_before_4g_wrap() {
        let stub = reset_vector_stub();
        assert_eq!(&stub[..5], &[0xB0, 0x01, 0xBA, 0x00, 0x06]);
        assert_eq!(stub[5], 0xEE);
        // The reset vector is 16 bytes below the end of the first MiB.
        assert!(layout::RESET_VECTOR + stub.len() as u64 <= 0x10_0000);
    }

    #[test]
    fn stub_lands_at_the_reset_vector() {
        let mem =
            vm_memory::GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 2 << 20)]).unwrap();
        write_reset_vector(&mem).unwrap();
        let mut got = [0u8; 9];
        mem.read_slice(&mut got, GuestAddress(0xF_FFF0)).unwrap();
        assert_eq!(got, reset_vector_stub());
    }
}
