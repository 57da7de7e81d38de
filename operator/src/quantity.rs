//! Kubernetes quantities compared by value: the API server stores `1000m` as `1`, `0.5` as
//! `500m` and `1024Mi` as `1Gi` (it re-serializes every quantity in canonical form:
//! Kubernetes API reference, "Quantity"), so a user's spelling must not read as a change.

/// A quantity as `digits × 10^exp10 × 2^exp2`, exact (no floating point).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Parsed {
    digits: i128,
    exp10: i32,
    exp2: u32,
}

/// `<sign><digits>[.<digits>]<suffix>` with a binary (`Ki`…`Ei`), decimal SI (`n`…`E`) or
/// exponent (`e3`, `E-2`) suffix, as the Quantity grammar defines.
fn parse(text: &str) -> Option<Parsed> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    let (negative, number) = match number.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, number.strip_prefix('+').unwrap_or(number)),
    };
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() && fraction.is_empty()
        || !whole
            .bytes()
            .chain(fraction.bytes())
            .all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let mut digits: i128 = 0;
    for b in whole.bytes().chain(fraction.bytes()) {
        digits = digits.checked_mul(10)?.checked_add(i128::from(b - b'0'))?;
    }
    if negative {
        digits = -digits;
    }
    let mut exp10 = -i32::try_from(fraction.len()).ok()?;
    let mut exp2 = 0;
    match suffix {
        "" => {}
        "Ki" => exp2 = 10,
        "Mi" => exp2 = 20,
        "Gi" => exp2 = 30,
        "Ti" => exp2 = 40,
        "Pi" => exp2 = 50,
        "Ei" => exp2 = 60,
        "n" => exp10 -= 9,
        "u" => exp10 -= 6,
        "m" => exp10 -= 3,
        "k" => exp10 += 3,
        "M" => exp10 += 6,
        "G" => exp10 += 9,
        "T" => exp10 += 12,
        "P" => exp10 += 15,
        "E" => exp10 += 18,
        exponent => {
            let power = exponent
                .strip_prefix('e')
                .or_else(|| exponent.strip_prefix('E'))?;
            exp10 += power.parse::<i32>().ok()?;
        }
    }
    Some(Parsed {
        digits,
        exp10,
        exp2,
    })
}

/// `digits × 10^exp10 × 2^exp2` scaled by `10^shift10` (shift ≥ 0), if it fits.
fn scaled(q: Parsed, shift10: u32) -> Option<i128> {
    let mut value = q.digits.checked_mul(10i128.checked_pow(shift10)?)?;
    value = value.checked_mul(1i128.checked_shl(q.exp2)?)?;
    Some(value)
}

/// Whether `a` and `b` are the same quantity. Strings that are not quantities (or too
/// large to compare exactly) are equal only as strings.
pub fn same(a: &str, b: &str) -> bool {
    if a == b {
        return true;
    }
    let (Some(pa), Some(pb)) = (parse(a), parse(b)) else {
        return false;
    };
    // Bring both to the smaller power of ten, then compare the integers.
    let low = pa.exp10.min(pb.exp10);
    let shift = |q: Parsed| u32::try_from(q.exp10 - low).ok();
    match (
        shift(pa).and_then(|s| scaled(pa, s)),
        shift(pb).and_then(|s| scaled(pb, s)),
    ) {
        (Some(x), Some(y)) => x == y,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::same;

    #[test]
    fn the_api_servers_canonical_forms_equal_the_users_spellings() {
        for (user, stored) in [
            ("1000m", "1"),
            ("0.5", "500m"),
            ("1024Mi", "1Gi"),
            ("1.5Gi", "1536Mi"),
            ("250m", "250m"),
            ("1e3", "1k"),
            ("2000", "2k"),
            ("0.1", "100m"),
            ("128974848", "123Mi"),
        ] {
            assert!(same(user, stored), "{user} = {stored}");
        }
    }

    #[test]
    fn different_amounts_and_non_quantities_differ() {
        for (a, b) in [
            ("1", "2"),
            ("500m", "0.6"),
            ("1Gi", "1G"),
            ("1Mi", "1M"),
            ("abc", "1"),
            ("", "0"),
            ("1x", "1"),
        ] {
            assert!(!same(a, b), "{a} != {b}");
        }
    }
}
