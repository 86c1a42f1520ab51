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

/* Fills a whole packet's checksums: the IPv4 header's and, on a first
 * fragment, the TCP, UDP, ICMP or ICMPv6 one. With partial, a TCP or UDP
 * checksum field gets only the pseudo header's sum, not inverted: what a
 * device that finishes checksums (an offload) starts from. Returns 0 or
 * ZTNA_ERR_MALFORMED. */
int ippkt_set_checksums(uint8_t *p, size_t n, int partial);

/* Verifies the IPv4 header checksum and, on a first fragment, the TCP,
 * UDP (0 = none over IPv4), ICMP or ICMPv6 checksum. Returns 0 or
 * ZTNA_ERR_MALFORMED. */
int ippkt_verify(const uint8_t *p, size_t n);

/* The transport header and payload: *l4 and *l4len (0 for a later
 * fragment). */
void ippkt_l4(const uint8_t *p, const struct ippkt *ip, const uint8_t **l4,
              size_t *l4len);

/* Builds an IP/UDP packet (version 4 or 6; addresses of that family, ports
 * in host order) with DF and TTL 64 for IPv4, checksums computed. Returns
 * the length or ZTNA_ERR_TOO_LARGE. */
/* An ICMP (version 4) or ICMPv6 echo request. Returns its length. */
int ippkt_build_echo(uint8_t *out, size_t cap, int version,
                     const uint8_t *src, const uint8_t *dst, uint16_t id,
                     uint16_t seq, const uint8_t *payload, size_t plen);
int ippkt_build_udp(uint8_t *out, size_t cap, int version, const uint8_t *src,
                    uint16_t sport, const uint8_t *dst, uint16_t dport,
                    const uint8_t *payload, size_t plen);

/* Turns an ICMP echo request (or ICMPv6 echo request) in place into its
 * reply: addresses swapped, type changed, checksums recomputed. Returns 0,
 * or ZTNA_ERR_MALFORMED when p is not an echo request. */
int ippkt_echo_reply(uint8_t *p, size_t n);
/* An ICMP/ICMPv6 echo's data: returns 0 for a request, 1 for a reply,
 * -1 for anything else. */
int ippkt_echo_payload(const uint8_t *p, size_t n, const uint8_t **payload,
                       size_t *plen);

/* Builds ICMP "fragmentation needed" (IPv4) or ICMPv6 "packet too big"
 * from address from to the source of orig, quoting as much of orig as
 * fits. Returns the length or a negative error. */
int ippkt_build_too_big(uint8_t *out, size_t cap, const uint8_t *orig,
                        size_t n, uint16_t mtu, const uint8_t *from);

/* Builds the RST a TCP segment of no connection gets (RFC 9293 3.10.7.1):
 * for a segment with ACK, a RST with the sequence number it acknowledges;
 * otherwise (a SYN) a RST|ACK of what it carried. Returns the length, 0
 * for a segment that is itself a RST (never answered), or a negative
 * error. */
int ippkt_build_rst(uint8_t *out, size_t cap, const uint8_t *seg, size_t n);

#endif
