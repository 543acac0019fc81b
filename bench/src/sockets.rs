//! Sockets left in TIME_WAIT, counted from the kernel's tables (`/proc/net/tcp`, `tcp6`).

/// The state column's value for TIME_WAIT.
const TIME_WAIT: &str = "06";

/// TIME_WAIT sockets: (those with either end on one of `ports`, all of them).
pub fn time_wait(ports: &[u16]) -> (u64, u64) {
    let mut on_ports = 0;
    let mut all = 0;
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        if let Ok(text) = std::fs::read_to_string(table) {
            let (p, a) = count_time_wait(&text, ports);
            on_ports += p;
            all += a;
        }
    }
    (on_ports, all)
}

/// Counts the TIME_WAIT rows of one table: (either end on one of `ports`, all).
pub fn count_time_wait(table: &str, ports: &[u16]) -> (u64, u64) {
    let mut on_ports = 0;
    let mut all = 0;
    for line in table.lines().skip(1) {
        let cols: Vec<&str> = line.split_whitespace().collect();
        if cols.len() < 4 || cols[3] != TIME_WAIT {
            continue;
        }
        all += 1;
        if [cols[1], cols[2]]
            .iter()
            .filter_map(|addr| port(addr))
            .any(|p| ports.contains(&p))
        {
            on_ports += 1;
        }
    }
    (on_ports, all)
}

/// `0100007F:A8C5` → 43205.
fn port(addr: &str) -> Option<u16> {
    u16::from_str_radix(addr.rsplit(':').next()?, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rows of a real /proc/net/tcp: a listener, an established connection and three in
    /// TIME_WAIT (two on port 0xA8C5 = 43205, as the local or the remote end).
    const TABLE: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:A8C5 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 5101 1 0 100 0 0 10 0
   1: 0100007F:A8C5 0100007F:D2F0 01 00000000:00000000 00:00000000 00000000     0        0 5102 1 0 20 4 30 10 -1
   2: 0100007F:D2F2 0100007F:A8C5 06 00000000:00000000 03:00001770 00000000     0        0 0 3
   3: 0100007F:A8C5 0100007F:D2F4 06 00000000:00000000 03:00001770 00000000     0        0 0 3
   4: 0100007F:1F90 0100007F:D300 06 00000000:00000000 03:00001770 00000000     0        0 0 3
";

    #[test]
    fn counts_time_wait_on_the_ports_and_in_all() {
        assert_eq!(count_time_wait(TABLE, &[43205]), (2, 3));
        assert_eq!(count_time_wait(TABLE, &[8080]), (1, 3));
        assert_eq!(count_time_wait(TABLE, &[]), (0, 3));
        assert_eq!(count_time_wait("", &[1]), (0, 0));
    }

    #[test]
    fn reads_hex_ports() {
        assert_eq!(port("0100007F:A8C5"), Some(43205));
        assert_eq!(port("00000000000000000000000001000000:1F90"), Some(8080));
        assert_eq!(port("junk"), None);
    }
}
