/* ippkt.h - sans-IO IPv4/IPv6 parsing, checksums and address rewriting.
 *
 * Everything here works on a caller's buffer and never reads past its
 * length. Address rewriting updates the IPv4 header checksum and the
 * TCP/UDP (and ICMPv6) checksums incrementally, as RFC 1624 describes.
 */
#ifndef ZTNA_IPPKT_H
#define ZTNA_IPPKT_H

#include <stddef.h>
#include <stdint.h>

struct ippkt {
  int version;        /* 4 or 6 */
  size_t hdrlen;      /* IP header (IPv6: fixed 40, extension headers are
                         part of the payload) */
  size_t totlen;      /* from the header; <= the buffer's length */
  uint8_t proto;      /* IPv4 protocol / IPv6 next header */
  int first_fragment; /* the L4 header is in this packet */
  const uint8_t *src, *dst; /* 4 or 16 bytes, inside the packet */
  size_t addrlen;
};

/* Parses the IP header. Returns 0, or ZTNA_ERR_MALFORMED for a packet that
 * is not a whole IPv4/IPv6 packet (bad version, IHL, lengths). */
int ippkt_parse(const uint8_t *p, size_t n, struct ippkt *out);

/* Internet checksum (RFC 1071) over d, starting from sum. */
uint32_t ippkt_sum(const uint8_t *d, size_t n, uint32_t sum);
uint16_t ippkt_fold(uint32_t sum);

/* Replaces the source (which = 0) or destination (which = 1) address with
 * addr (4 or 16 bytes, the packet's family) and fixes the checksums.
 * Returns 0 or ZTNA_ERR_MALFORMED. */
int ippkt_rewrite_addr(uint8_t *p, size_t n, int which, const uint8_t *addr);

#endif
