#!/bin/sh
# Recover one chunk-store (format 2) backup by hand, without cosmic-backup or Python:
#   sh scripts/recover.sh BACKUP_ID > payload
# Run it from the project root. It reads the key from .backup_key (or BACKUP_KEY_FILE) and
# the backups from ./tmp/backups (or BACKUP_DIR), and writes the backup's payload (a
# pg_dump custom-format dump, or a tar) to stdout. Only POSIX sh, openssl, gunzip and POSIX
# utilities are used. Every object's MAC is checked before it is used; the first that does
# not match, or a missing object or chunk, stops the script with a message naming it.
# Exit codes: 0 done; 2 bad usage, no key file or no manifest; 3 an object is damaged,
# missing or not what its manifest says (nothing wrong was written; a partial payload may
# have been, so do not use the output).
# How it works, and why no secret is ever on a command line: docs/format.md, "Recovery by
# hand (scripts/recover.sh)".
set -eu
umask 077
LC_ALL=C
export LC_ALL

usage() { printf 'recover.sh: %s\n' "$1" >&2; exit 2; }
damaged() { printf 'recover.sh: %s\n' "$1" >&2; exit 3; }

[ $# -eq 1 ] || usage "give one backup id, e.g. sh scripts/recover.sh database-20261124T020000Z > database.dump"
ID=$1
case "$ID" in
    database-* | files-* | config-*) ;;
    *) usage "$ID is not a backup id: it starts with database-, files- or config- (see cosmic-backup list, or the manifests' names)" ;;
esac
case "$ID" in
    *[!A-Za-z0-9.-]*) usage "$ID is not a backup id: it has characters no id has" ;;
esac
COMPONENT=${ID%%-*}
ROOT=${BACKUP_DIR:-./tmp/backups}
KEY_FILE=${BACKUP_KEY_FILE:-.backup_key}
STORE=$ROOT/store
MANIFEST=$ROOT/$COMPONENT/$ID.manifest.json
[ -f "$KEY_FILE" ] || usage "no key file $KEY_FILE: run from the project root, or set BACKUP_KEY_FILE to the key file (for BACKUP_KEY, write it to a private file first)"
[ -f "$MANIFEST" ] || usage "no manifest $MANIFEST: check the id, and run from the project root or set BACKUP_DIR"

T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

# --- HMAC-SHA256 from plain SHA-256, so that no key is ever in an argv --------------------
# openssl takes HMAC keys only on its command line (-macopt hexkey:, -hmac), where ps shows
# them. HMAC(K, m) = SHA256((K xor opad) || SHA256((K xor ipad) || m)) (RFC 2104), so each
# key is kept as its two 64-byte pad blocks in files, written by awk (as base64, decoded by
# openssl), and only `openssl dgst -sha256` runs on them.
PAD_AWK='
function xor(a, b,    r, p) {
    r = 0; p = 1
    while (a > 0 || b > 0) { if (a % 2 != b % 2) r += p; a = int(a / 2); b = int(b / 2); p *= 2 }
    return r
}
NR == 1 {
    hex = "0123456789abcdef"; line = tolower($0)
    b64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    for (i = 1; i <= 64; i++) {
        v = 0
        if (2 * i <= length(line))
            v = (index(hex, substr(line, 2 * i - 1, 1)) - 1) * 16 + index(hex, substr(line, 2 * i, 1)) - 1
        byte[i] = xor(v, pad)
    }
    byte[65] = 0; byte[66] = 0
    out = ""
    for (i = 1; i <= 64; i += 3) {
        n = byte[i] * 65536 + byte[i + 1] * 256 + byte[i + 2]
        out = out substr(b64, int(n / 262144) + 1, 1) substr(b64, int(n / 4096) % 64 + 1, 1)
        out = out (i + 1 <= 64 ? substr(b64, int(n / 64) % 64 + 1, 1) : "=")
        out = out (i + 2 <= 64 ? substr(b64, n % 64 + 1, 1) : "=")
    }
    print out
}'

# hmac_key NAME HEXFILE: keep the key whose hex digits are HEXFILE's first line as NAME.
hmac_key() {
    awk -v pad=54 "$PAD_AWK" < "$2" | openssl base64 -d -A -out "$T/$1.ipad"
    awk -v pad=92 "$PAD_AWK" < "$2" | openssl base64 -d -A -out "$T/$1.opad"
}

# hmac NAME FILE: print the HMAC-SHA256 of FILE under key NAME, in lowercase hex.
hmac() {
    cat "$T/$1.ipad" "$2" | openssl dgst -sha256 -binary > "$T/inner"
    cat "$T/$1.opad" "$T/inner" | openssl dgst -sha256 | sed 's/^.*= *//'
}

# derive NAME LABEL: NAME's key is HMAC-SHA256(data key, LABEL) (docs/format.md's table).
derive() {
    printf '%s' "$2" > "$T/label"
    hmac data "$T/label" > "$T/$1.hex"
    hmac_key "$1" "$T/$1.hex"
}

# decrypt FILE: the sealed object's plaintext under the data key, on stdout.
decrypt() {
    openssl enc -d -aes-256-cbc -pbkdf2 -iter "$OBJECT_N" -md sha256 -pass "file:$T/datakey" -in "$1"
}

# checked_copy KEY FILE NAME WHAT: copy FILE into $T/object and check its MAC is NAME, so
# that what is decrypted next is exactly the bytes that were checked.
checked_copy() {
    [ -f "$2" ] || damaged "$4 $2 is missing: this backup cannot be recovered from this folder; fetch the object from the off-site copy, or use another backup."
    cat "$2" > "$T/object"
    [ "$(hmac "$1" "$T/object")" = "$3" ] || damaged "$4 $2 fails its MAC check: it is damaged or was altered. Do not use this backup; use another one."
}

# --- the store's parameters and the data key ----------------------------------------------
[ -f "$STORE/config" ] || usage "no chunk store at $STORE (no store/config): is $ID a format 1 backup? Then follow docs/format.md, \"Recovery by hand\", for its .gz.enc artifact"
# store/config's own MAC needs its canonical JSON, which sh cannot make; a changed count
# only makes the wrap or an object fail below.
number() { sed -n "s/^ *\"$1\": *\\([0-9][0-9]*\\).*/\\1/p" "$STORE/config"; }
WRAP_N=$(number wrap_iterations)
OBJECT_N=$(number object_iterations)
[ -n "$WRAP_N" ] && [ -n "$OBJECT_N" ] || damaged "$STORE/config has no wrap_iterations or object_iterations: it is damaged."

# The wrap MAC key: the AES key openssl derives from the passphrase with salt "cbwrapv2".
openssl enc -aes-256-cbc -pbkdf2 -iter "$WRAP_N" -md sha256 -pass "file:$KEY_FILE" \
    -S 6362777261707632 -P < /dev/null | sed -n 's/^key *= *//p' > "$T/wrap.hex"
hmac_key wrap "$T/wrap.hex"
rm -f "$T/wrap.hex"
WRAP=
for candidate in "$STORE"/keys/*.key; do
    [ -f "$candidate" ] || continue
    name=${candidate##*/}
    name=${name%.key}
    if [ "$(hmac wrap "$candidate")" = "${name#*.}" ]; then WRAP=$candidate; break; fi
done
[ -n "$WRAP" ] || damaged "no wrap in $STORE/keys/ opens with the key in $KEY_FILE: use the key this store was made with (a retired one is in .backup_keyring/), or restore $STORE/keys from the off-site copy."
openssl enc -d -aes-256-cbc -pbkdf2 -iter "$WRAP_N" -md sha256 -pass "file:$KEY_FILE" \
    -in "$WRAP" -out "$T/datakey" || damaged "the wrap $WRAP passes its MAC but does not decrypt: it is damaged."
hmac_key data "$T/datakey"
derive pack pack-mac
derive index index-mac
derive list list-mac
derive chunk chunk-id

# --- the manifest (not authenticated here: its MAC needs canonical JSON) and the list -----
# What it gives is checked: the list must pass its MAC and name this backup.
awk '{ text = text $0 " " }
END {
    if (match(text, /"chunk_list": *\{[^}]*\}/)) {
        block = substr(text, RSTART, RLENGTH)
        text = substr(text, 1, RSTART - 1) substr(text, RSTART + RLENGTH)
        if (match(block, /"mac": *"[0-9a-f]*"/)) { s = substr(block, RSTART, RLENGTH); sub(/.*: *"/, "", s); sub(/"/, "", s); print "list_mac " s }
        if (match(block, /"name": *"[^"]*"/)) { s = substr(block, RSTART, RLENGTH); sub(/.*: *"/, "", s); sub(/"/, "", s); print "list_name " s }
    }
    if (match(text, /"format_version": *[0-9]+/)) { s = substr(text, RSTART, RLENGTH); sub(/.*: */, "", s); print "format " s }
    if (match(text, /"status": *"[^"]*"/)) { s = substr(text, RSTART, RLENGTH); sub(/.*: *"/, "", s); sub(/"/, "", s); print "status " s }
    if (match(text, /"data_key": *"[0-9a-f]*"/)) { s = substr(text, RSTART, RLENGTH); sub(/.*: *"/, "", s); sub(/"/, "", s); print "data_key " s }
}' "$MANIFEST" > "$T/manifest"
field() { sed -n "s/^$1 //p" "$T/manifest"; }
FORMAT=$(field format)
[ "$FORMAT" = 2 ] || usage "$MANIFEST is format ${FORMAT:-unknown}, not a chunk-store backup: follow docs/format.md, \"Recovery by hand\", for a format 1 artifact"
[ "$(field status)" = ok ] || damaged "$MANIFEST records a failed backup: there is nothing to recover; use another backup."
LIST_MAC=$(field list_mac)
[ "$(field list_name)" = "$ID.chunks" ] && [ -n "$LIST_MAC" ] || damaged "$MANIFEST names no chunk list $ID.chunks with its MAC: it is damaged."
printf 'fingerprint' > "$T/label"
FINGERPRINT=$(hmac data "$T/label" | awk '{ print substr($0, 1, 16) }')
[ "$FINGERPRINT" = "$(field data_key)" ] || damaged "$MANIFEST was made with data key $(field data_key), but this store's is $FINGERPRINT: it belongs to another store."

checked_copy list "$ROOT/$COMPONENT/$ID.chunks" "$LIST_MAC" "the chunk list"
decrypt "$T/object" | gunzip > "$T/list" 2> /dev/null || damaged "the chunk list $ROOT/$COMPONENT/$ID.chunks passes its MAC but does not decrypt: it is damaged."
# "part" lines go to $T/parts; the sizes are echoed for the checks below.
awk -v id="$ID" -v parts="$T/parts" '
function refuse() { bad = 1; exit 1 }
NR == 1 && $0 != "cosmic-backup chunk list 2" { refuse() }
NR == 2 && $0 != "backup " id { refuse() }
NR == 4 && $1 == "size" { size = $2 }
NR == 5 && $1 == "entries" { entries = $2; text = $3 }
NR > 5 && $1 == "part" && NF == 3 { print $2, $3 > parts; next }
NR > 5 && $0 == "end" { done = 1; next }
NR > 5 || done { refuse() }
END { if (bad || !done || size == "" || entries == "") exit 1; print size, entries, text }
' "$T/list" > "$T/sizes" || damaged "the chunk list $ROOT/$COMPONENT/$ID.chunks passes its MAC but is not the list of $ID (it was copied from another backup, or is damaged)."
read -r SIZE ENTRIES TEXT_SIZE < "$T/sizes"
[ -f "$T/parts" ] || : > "$T/parts"

# --- the index: every object's MAC checked against its name, superseded ones skipped ------
: > "$T/index"
for object in "$STORE"/index/*; do
    [ -f "$object" ] || continue
    checked_copy index "$object" "${object##*/}" "the index object"
    printf 'object %s\n' "${object##*/}" >> "$T/index"
    decrypt "$T/object" | gunzip >> "$T/index" 2> /dev/null || damaged "the index object $object passes its MAC but does not decrypt: it is damaged."
done
sed -n 's/^supersedes //p' "$T/index" | sort -u > "$T/superseded"
: > "$T/present"
for pack in "$STORE"/packs/*/*; do
    [ -f "$pack" ] || continue
    printf '%s\n' "${pack##*/}" >> "$T/present"
done

# plan REFS TOTAL: for each "<id> <plain length>" of REFS, in order, a line
# "<pack> <offset> <length> <id>"; stops at a chunk in no index object or whose pack is
# missing, or when the lengths do not add up to TOTAL.
plan() {
    awk -v total="$2" -v errors="$T/error" '
    function fail(message) { print message > errors; failed = 1; exit 1 }
    FILENAME == ARGV[1] { gone[$1] = 1; next }
    FILENAME == ARGV[2] { present[$1] = 1; next }
    FILENAME == ARGV[3] {
        if ($1 == "object") { use = !($2 in gone); next }
        if (!use) next
        if ($1 == "pack") { pack = $2; next }
        if (NF == 4 && length($1) == 64 && (!($1 in where) || (!(packof[$1] in present) && (pack in present)))) {
            where[$1] = pack " " $2 " " $3; packof[$1] = pack; plain[$1] = $4
        }
        next
    }
    {
        n++
        if (!($1 in where)) fail("chunk " $1 " (number " n ") is in no index object: the store is damaged; run cosmic-backup verify, or use another backup.")
        if (!(packof[$1] in present)) fail("pack " packof[$1] " (chunk number " n ") is missing from the store: fetch it from the off-site copy, or use another backup.")
        if (plain[$1] != $2) fail("chunk " $1 " (number " n ") has another length in the index than in the list: the store is damaged.")
        sum += $2
        print where[$1], $1
    }
    END {
        if (failed) exit 1
        if (sum != total) { print "the chunks add up to " sum + 0 " bytes, not the " total " the list records: the store is damaged." > errors; exit 1 }
    }
    ' "$T/superseded" "$T/present" "$T/index" "$1" > "$T/plan" || damaged "$(cat "$T/error" 2> /dev/null || echo 'the index could not be read')"
}

# extract: write the chunks of $T/plan to stdout. Every pack's MAC is checked before the
# first byte (a damaged pack writes nothing), again on the copy that is decrypted, and
# every chunk against its id (the order check) before it is written.
extract() {
    awk '!seen[$1]++ { print $1 }' "$T/plan" > "$T/packs"
    while read -r pack; do
        file=$STORE/packs/${pack%"${pack#??}"}/$pack
        [ -f "$file" ] || damaged "pack $file is missing: fetch it from the off-site copy, or use another backup."
        [ "$(hmac pack "$file")" = "$pack" ] || damaged "pack $file fails its MAC check: it is damaged or was altered. Do not use this backup; use another one."
    done < "$T/packs"
    opened=
    while read -r pack offset length chunk; do
        if [ "$pack" != "$opened" ]; then
            prefix=${pack%"${pack#??}"}
            checked_copy pack "$STORE/packs/$prefix/$pack" "$pack" "pack"
            decrypt "$T/object" > "$T/pack" || damaged "pack $STORE/packs/$prefix/$pack passes its MAC but does not decrypt: it is damaged."
            opened=$pack
        fi
        # Two dd on one open file: skip to the member and copy its first LEN mod 4096
        # bytes in 64-byte blocks, then the rest in 4 KiB blocks.
        { dd bs=64 skip=$((offset / 64)) count=$(((length % 4096) / 64)) && dd bs=4096 count=$((length / 4096)); } \
            < "$T/pack" 2> /dev/null | gunzip > "$T/chunk" 2> /dev/null || damaged "chunk $chunk in pack $pack does not gunzip: the pack's index entry is wrong; run cosmic-backup verify."
        [ "$(hmac chunk "$T/chunk")" = "$chunk" ] || damaged "chunk $chunk in pack $pack is not the chunk its id names: the store is damaged (swapped or misplaced chunk)."
        cat "$T/chunk"
    done < "$T/plan"
}

# The entry text first (its parts are chunks like any other), then the payload.
plan "$T/parts" "$TEXT_SIZE"
extract > "$T/entries"
[ "$(awk 'END { print NR }' "$T/entries")" = "$ENTRIES" ] || damaged "the entry text of $ID does not have the $ENTRIES entries its list records: the store is damaged."
plan "$T/entries" "$SIZE"
extract
