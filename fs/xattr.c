/*
 * xattr.c - extended attributes: the flags, Message-ID, UID, folder and
 * conversation of a message as user.convoyfs.*. Setting or removing one
 * answers EROFS (ops.c).
 */
#define LOG_CAT "fs"
#include "fs_i.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "names.h"

static const char *const xattr_names[] = {
	"user.convoyfs.flags", "user.convoyfs.message-id", "user.convoyfs.uid",
	"user.convoyfs.folder", "user.convoyfs.conversation"
};

static int xattr_value(struct fs *fs, fuse_ino_t ino, const char *name,
		       char **value)
{
	struct store_msg m;
	int rc;

	if (is_recovered_ino(ino))
		return !strcmp(name, "user.convoyfs.reason")
			       ? recovered_reason(fs, ino, value)
			       : -ENODATA;
	if (!is_message_ino(ino))
		return -ENODATA;
	rc = get_msg(fs, (int64_t)ino, &m);
	if (rc)
		return rc;
	rc = 0;
	if (!strcmp(name, xattr_names[0])) {
		*value = xstrdup(m.flags ? m.flags : "");
	} else if (!strcmp(name, xattr_names[1]) && m.message_id) {
		*value = xstrdup(m.message_id);
	} else if (!strcmp(name, xattr_names[2])) {
		*value = xasprintf("%u", m.uid);
	} else if (!strcmp(name, xattr_names[3])) {
		struct store_folder f;
		struct store *st;

		rc = borrow(fs, &st);
		if (!rc) {
			rc = store_folder_get(st, store_msg_shown_in(&m), &f);
			give_back(fs, st);
		}
		if (!rc) {
			*value = xstrdup(f.name);
			store_folder_release(&f);
		}
	} else if (!strcmp(name, xattr_names[4]) && m.conv) {
		/* the directory name under Conversations/ */
		struct store_conv c;
		char buf[NAMES_MAX + 1];

		rc = get_conv(fs, m.conv, &c);
		if (!rc) {
			conv_name(buf, &c);
			*value = xstrdup(buf);
			store_conv_release(&c);
		}
	} else {
		rc = -ENODATA;
	}
	store_msg_release(&m);
	return rc;
}

void op_getxattr(fuse_req_t req, fuse_ino_t ino, const char *name,
		 size_t size)
{
	char *value = NULL;
	size_t len;
	int rc;

	count_req(req, REQ_GETXATTR);
	/*
	 * No security labels and no ACLs here: "not supported", not "no
	 * such attribute". ls -l asks for both of every file; told they
	 * are not supported, it stops asking for the rest of the device
	 * (coreutils remembers it). Unlike ENOSYS, this stops the kernel
	 * from nothing: user.convoyfs.* are still asked for.
	 */
	if (!strncmp(name, "security.", 9) || !strncmp(name, "system.", 7)) {
		fuse_reply_err(req, EOPNOTSUPP);
		return;
	}
	rc = xattr_value(fs_of(req), ino, name, &value);
	if (rc) {
		fuse_reply_err(req, -rc);
		return;
	}
	len = strlen(value);
	if (!size)
		fuse_reply_xattr(req, len);
	else if (size < len)
		fuse_reply_err(req, ERANGE);
	else
		fuse_reply_buf(req, value, len);
	free(value);
}

void op_listxattr(fuse_req_t req, fuse_ino_t ino, size_t size)
{
	char buf[256];
	size_t len = 0;

	count_req(req, REQ_LISTXATTR);
	if (is_message_ino(ino)) {
		for (size_t i = 0; i < sizeof(xattr_names) / sizeof(xattr_names[0]);
		     i++) {
			memcpy(buf + len, xattr_names[i],
			       strlen(xattr_names[i]) + 1);
			len += strlen(xattr_names[i]) + 1;
		}
	}
	if (!size)
		fuse_reply_xattr(req, len);
	else if (size < len)
		fuse_reply_err(req, ERANGE);
	else
		fuse_reply_buf(req, buf, len);
}
