//! How the process uses memory: one call at start-up, before any heavy allocation.

/// Turns transparent huge pages off for this process (Linux; elsewhere a no-op). Returns
/// whether the kernel took the call.
///
/// Why: mimalloc (the global allocator) asks for huge pages on the arenas it reserves
/// (`madvise(MADV_HUGEPAGE)`) and frees unused parts of them back to the OS in 64 KiB pieces.
/// On a kernel whose THP setting is `madvise` (common), a fault in such an arena may compact
/// memory to find a huge page and then zeroes all 2 MiB of it. Measured on the benchmark
/// machine: in the engine row, the kernel's `clear_page` took a fifth to a quarter of the
/// samples; in a slow spell the engine ran 17-48% faster with huge pages off (and no faster in
/// a calm one); firing a million timers had two runs in nine at a third and a half of the
/// usual rate with the defaults, none in seven with huge pages off (nor in seven with mimalloc
/// never purging, the other cure, which keeps every page it ever used). Databases and caches
/// that care for latency give the same advice. mimalloc does this when started with
/// `MIMALLOC_ALLOW_THP=0`, which it reads before `main`; this makes it the default.
///
/// Memory allocated since start-up keeps the huge pages it has; later faults get small
/// pages. The flag is inherited by child processes.
pub fn no_transparent_huge_pages() -> bool {
    #[cfg(target_os = "linux")]
    {
        nix::sys::prctl::set_thp_disable(true).is_ok()
    }
    #[cfg(not(target_os = "linux"))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    #[test]
    #[cfg(target_os = "linux")]
    fn transparent_huge_pages_go_off_for_the_process() {
        assert!(super::no_transparent_huge_pages());
        assert!(nix::sys::prctl::get_thp_disable().unwrap());
        // For the whole process, not the calling thread alone.
        let other = std::thread::spawn(|| nix::sys::prctl::get_thp_disable().unwrap());
        assert!(other.join().unwrap());
    }
}
