#!/bin/sh
# Module boundaries (DESIGN §1): fs/ speaks FUSE only, sync/ IMAP and TLS
# only, store/ holds all SQL. A stray include fails here.
top=${1:-.}
rc=0
check() { # DIR PATTERN WHAT
	hits=$(grep -rlE "$2" "$top/$1" --include='*.c' --include='*.h')
	if [ -n "$hits" ]; then
		echo "$1 reaches $3:"; echo "$hits"; rc=1
	fi
}
check fs 'libetpan|mailimap|openssl/|sqlite3' 'IMAP, TLS or SQL'
check sync 'fuse_lowlevel|fuse\.h|sqlite3' 'FUSE or SQL'
check store 'fuse_lowlevel|fuse\.h|libetpan|mailimap|openssl/' 'FUSE, IMAP or TLS'
check common 'fuse_lowlevel|libetpan|sqlite3|openssl/' 'a module'
# SQL text lives in store/ only
hits=$(grep -rlE '"(SELECT|INSERT|UPDATE|DELETE) ' "$top/fs" "$top/sync" --include='*.c')
[ -z "$hits" ] || { echo "SQL outside store/: $hits"; rc=1; }
[ $rc -eq 0 ] && echo "layout ok"
exit $rc
