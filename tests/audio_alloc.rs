//! No allocation per frame: after construction and a warm-up, 500 frames through each leg
//! (plus turn ends and barge-ins on the downlink) must not touch the heap.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use callbridge::audio::transcode::{Downlink, Uplink};

/// Counts allocations made on threads that switched counting on.
struct Counting;

thread_local! {
    // `const` initialisation: no lazy allocation inside the allocator.
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static COUNT: Cell<usize> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        bump();
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        bump();
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        bump();
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

fn bump() {
    let _ = COUNTING.try_with(|on| {
        if on.get() {
            let _ = COUNT.try_with(|c| c.set(c.get() + 1));
        }
    });
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Runs `f` and returns how many allocations it made on this thread.
fn allocations(f: impl FnOnce()) -> usize {
    COUNT.with(|c| c.set(0));
    COUNTING.with(|on| on.set(true));
    f();
    COUNTING.with(|on| on.set(false));
    COUNT.with(|c| c.get())
}

#[test]
fn counter_sees_allocations() {
    // The harness must be able to fail.
    assert!(allocations(|| drop(std::hint::black_box(vec![1u8; 16]))) >= 1);
}

#[test]
fn uplink_500_frames_allocate_nothing() {
    let frame: Vec<u8> = (0..160u32).map(|i| (i * 37 % 256) as u8).collect();
    let mut up = Uplink::new().unwrap();
    let mut out = Vec::with_capacity(4096);
    for _ in 0..5 {
        out.clear();
        up.process(&frame, &mut out);
    }
    let n = allocations(|| {
        for i in 0..500 {
            out.clear();
            up.process(&frame, &mut out);
            // Odd sizes too: the pipeline must not allocate for any chunking.
            up.process(&frame[..1 + i % 159], &mut out);
            up.process(&[], &mut out);
        }
        up.reset();
    });
    assert_eq!(n, 0, "uplink allocated {n} times in 500 frames");
}

#[test]
fn downlink_500_frames_allocate_nothing() {
    let frame: Vec<u8> = (0..960u32).map(|i| (i * 91 % 256) as u8).collect();
    let mut down = Downlink::new().unwrap();
    let mut out = Vec::with_capacity(4096);
    for _ in 0..5 {
        out.clear();
        down.process(&frame, &mut out);
    }
    let n = allocations(|| {
        for i in 0..500 {
            out.clear();
            down.process(&frame, &mut out);
            down.process(&frame[..1 + i % 961 % 960], &mut out);
            down.process(&[], &mut out);
            if i % 100 == 50 {
                down.finish(&mut out);
            }
            if i % 100 == 99 {
                down.reset();
            }
        }
    });
    assert_eq!(n, 0, "downlink allocated {n} times in 500 frames");
}
