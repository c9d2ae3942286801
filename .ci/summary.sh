#!/bin/sh
# One closing line for a `cargo test` log: cargo prints one "test result:"
# line per test binary (the last ones for doc-tests, which have none here).
# A test that skipped (its real part missing, CERTSYNC_REQUIRE_REAL unset)
# passes in cargo's count but printed one `SKIP <test>: …` line
# (certsync_tests::require), so it is counted as skipped, not passed.
awk '/^test result:/ {
        for (i = 1; i <= NF; i++) {
            if ($(i+1) ~ /^passed/) p += $i
            if ($(i+1) ~ /^failed/) f += $i
            if ($(i+1) ~ /^ignored/) s += $i
        }
     }
     # Anywhere in the line: the test threads write to stderr while
     # libtest writes "test x ... ok" to stdout, so lines may interleave.
     /SKIP [^ ]*: .* is not available/ { k++ }
     END { printf "total: %d passed, %d failed, %d skipped\n", p - k, f, s + k }' "$1"
