mod sleep;

pub use self::sleep::sleep;
pub use sleep::Sleep;

pub fn now() -> u64 {
    0
}
