#!/bin/sh
# gen_sql.sh FILE NAME - print FILE as a C string constant NAME.
printf '/* generated from %s by common/gen_sql.sh; do not edit */\nconst char %s[] =\n' "$1" "$2"
sed -e 's/\\/\\\\/g' -e 's/"/\\"/g' -e 's/^/    "/' -e 's/$/\\n"/' "$1"
printf '    ;\n'
