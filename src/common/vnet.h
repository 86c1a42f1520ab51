/* vnet.h - sans-IO reading of a TUN device opened with IFF_VNET_HDR and
 * TCP segmentation offload: each read is a virtio-net header and a packet
 * that may stand for many (a TCP segment of up to 64 KB that the kernel
 * did not cut, its checksum left to finish). vnet_split turns one read
 * into the MTU-sized packets with finished checksums that the tunnel
 * carries, as a NIC's segmentation offload would on the wire. */
#ifndef ZTNA_VNET_H
#define ZTNA_VNET_H

#include <stddef.h>
#include <stdint.h>

#define VNET_HDR_LEN 10 /* struct virtio_net_hdr (TUNSETVNETHDRSZ's default) */

/* virtio_net_hdr fields ztna reads (linux/virtio_net.h). */
#define VNET_F_NEEDS_CSUM 1
#define VNET_GSO_NONE 0
#define VNET_GSO_TCPV4 1
#define VNET_GSO_TCPV6 4
#define VNET_GSO_ECN 0x80

typedef void (*vnet_pkt_fn)(void *ud, uint8_t *pkt, size_t n);

/* Splits one read of n bytes (header and packet) into packets, each
 * written into out (cap bytes: room for one packet of the device's MTU)
 * and handed to fn before the next is made. A read that is one packet is
 * handed over in place (its checksum finished there). Returns the number
 * of packets, or ZTNA_ERR_MALFORMED when the read is not what the kernel
 * hands up (a header that does not fit the packet, a segment size of 0, a
 * GSO type other than TCP over IPv4/IPv6, an IPv6 extension header), in
 * which case fn saw nothing. */
int vnet_split(uint8_t *rd, size_t n, uint8_t *out, size_t cap,
               vnet_pkt_fn fn, void *ud);

/* The other way: packets bound for the TUN, a TCP flow's consecutive
 * segments joined into one write the kernel takes as a single received
 * segment (what GRO does for a NIC), so a download costs one write and
 * one pass through the kernel's TCP per 64 KB instead of per packet.
 * Packets are added in order; what cannot join is written after what is
 * held, so the order on the wire is the order added. */
#define VNET_GRO_MAX 65535 /* one IP packet */

/* One write: a virtio-net header (VNET_HDR_LEN bytes) and a packet. */
typedef void (*vnet_write_fn)(void *ud, const uint8_t *hdr,
                              const uint8_t *pkt, size_t n);

struct vnet_gro {
  size_t len;          /* bytes held in buf after the header (0: none) */
  size_t iplen, hlen;  /* IP header, IP + TCP headers */
  size_t mss;          /* payload of the first segment */
  size_t count;
  uint32_t next_seq;
  uint16_t next_id;
  uint8_t buf[VNET_HDR_LEN + VNET_GRO_MAX];
};

/* Adds one packet: joins it to the segments held, or writes what is held
 * and holds or writes this one. fn gets each write. Returns 0, or
 * ZTNA_ERR_TOO_LARGE (nothing written) for more than VNET_GRO_MAX bytes. */
int vnet_gro_add(struct vnet_gro *g, const uint8_t *pkt, size_t n,
                 vnet_write_fn fn, void *ud);
/* Writes what is held (at the end of each loop round). */
void vnet_gro_flush(struct vnet_gro *g, vnet_write_fn fn, void *ud);

#endif
