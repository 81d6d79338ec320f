#!/bin/sh
# Fill Paceline's Asterisk configuration from the environment, then run the given command
# (in the image: Asterisk, see docker/asterisk/Dockerfile).
#
# Every *.conf in $PACELINE_ASTERISK_SRC (default /etc/paceline/asterisk, the folder
# compose.yaml mounts) is copied to $PACELINE_ASTERISK_ETC (default /etc/asterisk) with each
# @NAME@ replaced by the environment variable NAME (outside comments). Asterisk's own ${...}
# is left alone.
# A placeholder whose variable is unset or empty, or whose value Asterisk would misread
# (a ';' starts a comment; spaces at either end are trimmed), stops the container with the
# file, the line and the variable's name; the value itself is never printed.
set -eu

src=${PACELINE_ASTERISK_SRC:-/etc/paceline/asterisk}
dst=${PACELINE_ASTERISK_ETC:-/etc/asterisk}

found=no
for file in "$src"/*.conf; do
    [ -e "$file" ] || continue
    found=yes
    name=$(basename "$file")
    tmp="$dst/.$name.paceline-tmp"
    if ! awk '
        {
            # Only the part before a comment (an unescaped ";") is filled in.
            rest = $0
            comment = ""
            if (match(rest, /(^|[^\\]);/)) {
                cut = (substr(rest, RSTART, 1) == ";") ? RSTART : RSTART + 1
                comment = substr(rest, cut)
                rest = substr(rest, 1, cut - 1)
            }
            out = ""
            while (match(rest, /@[A-Z][A-Z0-9_]*@/)) {
                var = substr(rest, RSTART + 1, RLENGTH - 2)
                value = ENVIRON[var]
                if (value == "") {
                    printf "%s:%d: @%s@: set %s in the environment (docker/.env)\n", \
                        FILENAME, FNR, var, var > "/dev/stderr"
                    failed = 1
                } else if (index(value, ";") || value ~ /^[ \t]/ || value ~ /[ \t]$/) {
                    printf "%s:%d: @%s@: the value of %s has a \";\" or spaces at an end, which Asterisk would misread; choose another\n", \
                        FILENAME, FNR, var, var > "/dev/stderr"
                    failed = 1
                }
                out = out substr(rest, 1, RSTART - 1) value
                rest = substr(rest, RSTART + RLENGTH)
            }
            print out rest comment
        }
        END { exit failed }
    ' "$file" > "$tmp"; then
        rm -f "$tmp"
        echo "render-config: $file not installed; Asterisk not started" >&2
        exit 1
    fi
    # Secrets inside: readable by Asterisk's user only.
    chmod 0640 "$tmp"
    if [ "$(id -u)" = 0 ] && id asterisk >/dev/null 2>&1; then
        chown asterisk:asterisk "$tmp"
    fi
    mv "$tmp" "$dst/$name"
done
if [ "$found" = no ]; then
    echo "render-config: no *.conf in $src (is docker/asterisk mounted there?)" >&2
    exit 1
fi

exec "$@"
