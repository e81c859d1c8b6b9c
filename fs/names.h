/*
 * names.h - file names of the namespace (DESIGN §5): message file names
 * and sanitised folder name components. Pure functions, libc only.
 */
#ifndef CONVOY_NAMES_H
#define CONVOY_NAMES_H

#include <stddef.h>
#include <stdint.h>

/* no name we make is longer: within notmuch's 245 (a file name is a
 * Xapian term for `notmuch new`), and leaving the tools that make names
 * from ours room within the kernel's NAME_MAX (255): rsync's
 * ".NAME.XXXXXX", a backup's "NAME.orig", an editor's ".NAME.swp" */
#define NAMES_MAX 200

/*
 * names_message - write into @buf (at least NAMES_MAX + 1 bytes) the file
 * name of a message: "YYYY-MM-DD HH.MM <subject> #<umid>.eml", the time
 * being @date (Unix time) shown in its own zone @zone (minutes east of
 * UTC). The subject (UTF-8, may be NULL or empty: "(no subject)") is
 * sanitised: invalid UTF-8 -> U+FFFD, control characters -> space, runs
 * of spaces collapsed, '/' and ':' -> '-', trimmed, and cut on a
 * character boundary so the whole name fits NAMES_MAX bytes. Unique
 * through the umid; stable because its inputs never change.
 * Returns the length.
 */
size_t names_message(char *buf, int64_t date, int zone, const char *subject,
		     int64_t umid);

/*
 * names_message_umid - the umid that a message name made by
 * names_message() carries ("... #123.eml" -> 123), or -1 if @name does
 * not have that shape.
 */
int64_t names_message_umid(const char *name);

/*
 * names_conversation - the directory name of a conversation: as
 * names_message() with its first date and subject, ending in " #<conv>"
 * (no extension). names_conversation_id() reads the id back, or -1.
 */
size_t names_conversation(char *buf, int64_t date, int zone,
			  const char *subject, int64_t conv);
int64_t names_conversation_id(const char *name);

/*
 * names_component - write into @buf (at least NAMES_MAX + 1 bytes) a safe
 * directory name for one folder name component @raw (UTF-8 or not):
 * invalid UTF-8 -> U+FFFD, control characters and '/' -> '_', "" / "." /
 * ".." and names starting with '.' get a '_' in front (so nothing is
 * hidden or special), cut to fit NAMES_MAX on a character boundary.
 * The caller makes collisions unique. Returns the length.
 */
size_t names_component(char *buf, const char *raw, size_t rawlen);

#endif
