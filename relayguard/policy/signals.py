"""What reply texts say, as data: ordered tiers of phrases, each naming a category.

The text is the primary signal; the enhanced code (status_codes.py) and the code
class only decide when no phrase here matches. Tiers are tried in order and the
first that matches wins, so a specific reading comes before a general one:
greylisting before blocklists (a greylist may say "blocked using grey..."),
a sender-domain listing before an IP listing (both say "blocked using"), an
IP block before a rate limit (a block may say "too many"), a full mailbox
before an unknown user (quota replies often carry 5.1.1).

Phrases are regexes over the normalised text (see `normalise`): lower case,
one space between words, IPv4/IPv6 addresses replaced by `ipaddr`, mail
addresses by `emailaddr`. Each phrase starts with `\\b` and a literal word (or a
group of literal words): classify() only tries the phrases whose first word's
prefix occurs in the text, which keeps it well above 50,000 replies a second.

Where the knowledge comes from (read for ideas; the patterns are ours):
RFC 3463/5321/7372/7505, Microsoft's "Email non-delivery reports and SMTP
errors in Exchange Online" and Outlook.com postmaster pages, Google's "SMTP
errors and codes" (support.google.com/a/answer/3726730), Yahoo's
senders.yahooinc.com/smtp-error-codes, GoDaddy's "What does my email bounceback
mean" (godaddy.com/help/3568), Comcast's postmaster error codes, sisimai's
reason and rhost tables, ZoneMTA's config/bounces.txt and KumoMTA's community
shaping rules. The corpus in policies/corpus/ holds the real lines.
"""

from __future__ import annotations

from dataclasses import dataclass

from relayguard.policy.categories import (
    DEST,
    EGRESS,
    FULL,
    MSG,
    NO_USER,
    PERM,
    POLICY,
    RBL,
    RCPT,
    SPAM,
    TEMP,
    THROTTLE,
    TOO_BIG,
    Category,
    Scope,
)


@dataclass(frozen=True, slots=True)
class TextSignal:
    id: str
    category: Category
    scope: Scope
    phrases: tuple[str, ...]
    codes: str = ""  # "" any code; "4" or "5": only replies of that class
    enhanced: str = ""  # only replies whose enhanced code starts with this ("5.4.1")
    # A generic signal ("policy", "rejected", "try again") says less than a specific
    # enhanced code, so the code table is consulted before it.
    generic: bool = False


def _s(
    signal_id: str,
    category: Category,
    scope: Scope,
    *phrases: str,
    codes: str = "",
    enhanced: str = "",
    generic: bool = False,
) -> TextSignal:
    return TextSignal(signal_id, category, scope, phrases, codes, enhanced, generic)


# Motive, not cause: Gmail ends many non-spam replies with "To reduce the amount of
# spam sent to Gmail, this message has been blocked" and cites its bulk-sender
# guidelines; the cause is in the sentence before. normalise() removes these.
BOILERPLATE = (
    (
        r"\bto (?:reduce the amount of|protect our users from|best protect our users from|"
        r"protect our users and (?:their|our) systems from) (?:spam|abuse|phishing)"
        r"(?: and (?:spam|abuse|phishing))?(?: sent to gmail)?"
    ),
    r"\b(?:requirements for |guidelines for )?bulk (?:email|mail) senders?(?: guidelines)?",
    r"\bbulk[_ ]?(?:email|mail)?[_ ]?sender[_ ]?guidelines",
    r"\breview (?:our )?rfc ?\d+ specifications?",
    r"\band review rfc ?\d+",
)


# Lookbehinds that keep "listed" from matching "not listed" / "unlisted".
_NOT = r"(?<!not )(?<!n't )(?<!un)"
# An IP-ish subject: "your IP", "the sending server", "this host", "ipaddr".
_OUR = (
    r"(?:your|the|this|our|sending|sender'?s?|client|source|connecting|remote|originating|"
    r"mail server'?s?|smtp server'?s?|server'?s?)"
)
_HOST = r"(?:ip|ip address|ip-address|ipaddr|host|server|mta|network|netblock|subnet|ip range)"
_BLOCKED = (
    r"(?:blocked|blacklisted|blocklisted|denylisted|banned|listed|rejected|refused|denied|"
    r"not (?:allowed|accepted|permitted|welcome|authori[sz]ed)|on (?:a|our|the) (?:black|block))"
)

SIGNALS: tuple[TextSignal, ...] = (
    # --- provider reply ids: unambiguous where they appear -------------------------
    # Outlook.com: RP-00x are rate limits; SC/OU/DY-00x and S3xxx block lists or IP
    # reputation (Outlook.com postmaster troubleshooting page).
    _s("microsoft.rate-id", THROTTLE, EGRESS, r"\brp-00\d\b"),
    _s(
        "microsoft.block-id",
        RBL,
        EGRESS,
        r"\b(?:sc|ou|dy)-00\d\b",
    ),
    # Microsoft 365 directory-based edge blocking: the recipient is not in the
    # tenant's directory ("550 5.4.1 Recipient address rejected: Access denied. AS(...)").
    _s("microsoft.dbeb", NO_USER, RCPT, r"\baccess denied\b", enhanced="5.4.1"),
    _s("microsoft.dbeb-id", NO_USER, RCPT, r"\baccess denied\. as\(\d+\)"),
    # Yahoo: TSS04/TS01/TS02/IPTS04/GL01 are volume or complaint deferrals; TS03,
    # TSS09/TSS11 ("permanently deferred") and BL2x (Spamhaus) are IP blocks; PHxx policy.
    _s("yahoo.permanent-deferral", RBL, EGRESS, r"\b(?:ts03|tss09|tss1\d|bl2\d)\b"),
    _s("yahoo.deferral", THROTTLE, EGRESS, r"\b(?:tss0[45]|ts0[12]|ipts0[45]|gl01)\b"),
    _s("yahoo.policy", POLICY, MSG, r"\bph0\d\b"),
    # GoDaddy IBxxx (godaddy.com/help/3568).
    _s("godaddy.rate", THROTTLE, EGRESS, r"\bib(?:007|101|504|510|605|607)\b"),
    _s("godaddy.block", RBL, EGRESS, r"\bib(?:10[3-6]|11[0-3])\b"),
    _s("godaddy.content", SPAM, MSG, r"\bib(?:212|705)\b"),
    _s("godaddy.ptr", POLICY, EGRESS, r"\bib108\b"),
    _s("godaddy.policy", POLICY, MSG, r"\bib(?:401|50[1-9])\b"),
    # Comcast postmaster codes: BLxxxxxx IP block lists, RLxxxxxx rate limits.
    _s("comcast.block", RBL, EGRESS, r"\bbl0\d{5}\b"),
    # Cox AUP#CDRBL (its IP block list); T-Online "IP=x - A problem occurred ... (BL)".
    _s("cox.block", RBL, EGRESS, r"\bcdrbl\b"),
    _s("t-online.block", RBL, EGRESS, r"\bip= ipaddr\b[^()]*\(.*\(bl\)"),
    # Mimecast's spam-signature verdicts.
    _s("mimecast.spam", SPAM, MSG, r"\bmcspamsignature", r"\bmcvirussignature"),
    _s("comcast.rate", THROTTLE, EGRESS, r"\brl0\d{5}\b"),
    # AOL (legacy, still seen on Verizon): (RTR:xx)/(RLY:xx)/(DYN:xx) blocks, (DNS:xx) rDNS.
    _s("aol.dns", POLICY, EGRESS, r"\bdns:(?:nr|p1|p2|rr)\b"),
    _s("aol.block", RBL, EGRESS, r"\b(?:rtr|rly|dyn|hvu|con|cdn|mxm):[a-z0-9]{2}\b"),
    # Gmail's help links name the reason: support.google.com/mail/?p=UnsolicitedIPError.
    _s("google.rate", THROTTLE, EGRESS, r"\bunsolicitedratelimiterror\b"),
    _s("google.ip", RBL, EGRESS, r"\b(?:unsolicitediperror|notauthorizederror)\b"),
    _s("google.content", SPAM, MSG, r"\b(?:unsolicitedmessageerror|blockedmessage)\b"),
    _s("google.receiving-rate", THROTTLE, RCPT, r"\breceivingrate\b"),
    _s("google.no-user", NO_USER, RCPT, r"\b(?:nosuchuser|disableduser)\b"),
    _s("google.quota", FULL, RCPT, r"\boverquota(?:temp|perm)\b"),
    # Exchange's recipient restrictions (RESOLVER.RST.AuthRequired, .NotAuthorized,
    # .RestrictedToRecipientsPermission): the group or mailbox takes mail from some only.
    _s("exchange.restricted", POLICY, RCPT, r"\bresolver\.rst\.(?!\w*sizelimit)"),
    _s("exchange.no-user", NO_USER, RCPT, r"\bresolver\.adr\.(?:recipnotfound|recipientnotfound)"),
    # Proofpoint's IP check link; Cisco's SenderBase; Trend Micro's reputation service.
    _s("proofpoint.ipcheck", RBL, EGRESS, r"\bipcheck\.proofpoint\b", r"\bproofpoint\.com/\?ip"),
    # --- specific readings that other tiers would misread -----------------------
    # The receiver's own DNSBL lookups are refused (Spamhaus/URIBL answer 127.255.255.x
    # or "query refused" to open resolvers): nothing of ours is listed.
    _s(
        "dnsbl-query-refused",
        TEMP,
        DEST,
        r"\bquery refused",
        r"\b(?:open|public) (?:dns )?resolver",
        r"\brefused\.shtml",
        r"\bexcessive number of queries",
    ),
    # A mailbox locked by another delivery is not a throttle of us.
    _s(
        "mailbox-busy",
        TEMP,
        RCPT,
        r"\bmailbox (?:is )?(?:busy|locked|in use|temporarily locked)",
    ),
    # SMTP dialogue errors: before the TLS, auth and rate readings that share words
    # ("no commands allowed to pipeline after STARTTLS", "too many unrecognized commands").
    _s(
        "protocol-violation",
        PERM,
        DEST,
        r"\bprotocol (?:violation|error)",
        r"\bbad sequence",
        r"\bsyntax error",
        r"\bpipelin",
        r"\btoo many (?:unrecognized|invalid|bad|unknown|unauthenticated|failed) commands?\b",
        r"\bno identity changes",
        r"\bline (?:length )?limit",
        r"\bbare (?:lf|line-?feed|line feed|cr|newline|carriage)",
        r"\bsender address syntax",
        r"\bmust precede",
        r"\ball rcpt commands were rejected",
    ),
    # Greylisting: a wait, whatever else the text says ("blocked using grey...").
    _s(
        "greylisting",
        TEMP,
        DEST,
        r"\bgr[ae]y-?list",
        r"\bgr[ae]y list",
        r"\bpostgrey\b",
        r"\bgreylisted\b",
        r"\bblocked using gr[ae]y\b",
        r"\bgrauliste",
    ),
    # Loops (RFC 5321 6.3 hop counts, Postfix "mail for x loops back to myself").
    _s(
        "loop",
        PERM,
        MSG,
        r"\btoo many (?:hops|\"?received)",
        r"\bhop count",
        r"\bmax(?:imum)? (?:number of )?hops",
        r"\bloops? back to myself",
        r"\b(?:mail|email|routing|message|delivery|forwarding) loop",
        r"\bhops\b",
        r"\bloop(?:ing)? detected",
        r"\bloop count",
    ),
    # A DNS lookup that failed for now (Postfix "Host not found, try again").
    _s(
        "dns-temporary",
        TEMP,
        DEST,
        r"\b(?:dns|name service|lookup|resolver|domain name)\b[^.;]{0,60}?"
        r"\b(?:try again|temporar\w*|timed? ?out|timeout|servfail)",
        r"\btemporary (?:dns|lookup|name service)",
        r"\btemporar\w* (?:\w+ ){0,2}(?:dns|lookup|name service|resolution)",
        r"\b(?:rdns|ptr|spf|dkim|dmarc)\b[^.;]{0,40}?\btemporar",
        r"\b(?:virus|content|spam|malware) (?:scanner|scanning|filter|check)\w*\b[^.;]{0,30}?"
        r"\b(?:unavailable|failed|failure|error|timeout|temporar)",
        r"\bunresolvable rfc\.?5321",
        r"\bcould be reached\b",
    ),
    # The receiver's own storage, not the recipient's mailbox.
    _s(
        "system-full",
        TEMP,
        DEST,
        r"\bsystem storage",
        r"\bsystem (?:is |disk is )?full",
        r"\binsufficient (?:system|server) (?:storage|resources|space)",
    ),
    # Sending quotas: before "quota" (a full mailbox).
    _s(
        "throttle.quota",
        THROTTLE,
        EGRESS,
        r"\b(?:sending|send|daily|hourly|relay|queue|message|messages|outbound|organi[sz]ation|"
        r"rate|submission|tenant) (?:\w+ )?quota",
        r"\bquota (?:for|of) (?:sending|messages|outbound|relay)",
        r"\bexceeded the quota for sending",
        r"\bpolicy rejection\W+quota exceeded",
    ),
    # Full mailbox, before "exceeded" rate limits and before unknown users.
    _s(
        "mailbox-full",
        FULL,
        RCPT,
        r"\bover ?quota",
        r"\bquota\b(?: \w+){0,3}? (?:exceeded|exceed|full|reached|violation)",
        r"\bexhausted (?:\w+ ){0,2}(?:storage|space|quota)",
        r"\bspeicher\w*\b[^.;]{0,30}?\b(?:voll|ueberschritten|überschritten)",
        r"\b(?:user|mailbox|recipient|account) has too many (?:messages|mails|emails)",
        r"\btoo many (?:messages|mails|emails) (?:on|in) (?:the )?(?:server|mailbox|account)",
        r"\b(?:mailbox|mail ?box|inbox|mail ?folder|mailfolder|folder|mail ?drop|maildir|mailspace|"
        r"storage)\b(?! unavailable)[^.;]{0,30}?\b(?:full|quota|over (?:the )?(?:limit|size)|"
        r"exceeds? (?:the )?(?:size|storage|allowed|limit|maximum))",
        r"\bexceeded (?:the |their |his |her |its |your )?(?:storage|mailbox|mail ?box|quota|"
        r"disk quota)",
        r"\bout of (?:storage|space|disk space)",
        r"\binsufficient (?:space|storage) (?:in|for) (?:the |this )?(?:mailbox|user|account|"
        r"recipient)",
        r"\b(?:not enough|no) (?:space|storage|room) (?:left )?(?:in|for) (?:the |this )?"
        r"(?:mailbox|user|recipient|account)",
        r"\bfull (?:mailbox|inbox)",
        r"\b(?:not|doesn'?t|does not|do not) have enough (?:space|storage|room)",
        r"\b(?:user|recipient|account)(?:'s)? (?:mailbox |inbox )?is full",
        r"\bpostfach (?:ist )?voll",
        r"\bbo[iî]te (?:aux lettres )?(?:est )?pleine",
        r"\bcasella (?:di posta )?(?:piena|pieno)",
        r"\bbuz[oó]n (?:de correo )?(?:lleno|excedido)",
        r"\bcaixa (?:postal )?cheia",
        r"\bmailbox (?:size |storage )?(?:limit|quota|size) (?:exceeded|reached)",
    ),
    # Too big, before "exceeded"/"too many" rate limits. Not a mailbox quota (above).
    _s(
        "message-too-big",
        TOO_BIG,
        MSG,
        r"\b(?:message|mail|email|msg|data|attachment)(?: size| length)? (?:is |was )?"
        r"(?:too (?:big|large|long)|exceeds|exceeded|exceeding|larger than|over (?:the )?"
        r"(?:size|maximum|limit))",
        r"\b(?:messages|attachments)(?: size| length) (?:is |are )?(?:too (?:big|large|long)|"
        r"exceeds?|exceeded|larger than)",
        r"\bsize (?:limit|exceeds|exceeded|too large|of (?:the )?message)",
        r"\b(?:exceeds?|exceeded|exceeding) (?:the |our |a |this )?(?:maximum|max|fixed|allowed|"
        r"permitted|message|system|size|server)[^.;]{0,30}?\bsize",
        r"\btoo (?:big|large)\b",
        r"\bmax(?:imum)? (?:allowed |permitted )?(?:message |mail |email )?size",
        r"\bmesg too big",
        r"\bmessage (?:size|length)\b[^.;]{0,30}?\bexceed",
        r"\bheaders? (?:is |are )?(?:\w+ )?(?:too )?(?:long|large|big)\b",
        r"\bmsgsize",
        r"\bmessage length exceeds",
        r"\bexceeds? size limit",
    ),
    # Phishing and malware verdicts name the content whatever else they mention
    # ("appears to impersonate paypal.com"), and a filter's score is about the message.
    _s(
        "spam.malware",
        SPAM,
        MSG,
        r"\bphish",
        r"\bmalware",
        r"\bransomware",
        r"\btrojan",
        r"\bmacros? (?:found|detected|are not allowed|not allowed)",
        r"\bvba macro",
        r"\bspam\w* score",
        r"\bscore exceeds",
        r"\banti-?spam (?:checks?|filters?|tests?|scans?|rules?)\b",
        r"\bspam (?:patterns?|contents?|signatures?)\b",
        r"\b(?:dspam|spamprofiler|mailmarshal|spamdefang|spamexperts)\b",
        r"\bcontent reject",
        r"\binappropriate (?:words|content|language)",
    ),
    # NetEase (163.com, 126.com): DT:SPM is its spam verdict; MI:STC, MI:SFQ sending limits.
    _s("netease.spam", SPAM, MSG, r"\bdt:spm\b"),
    _s("netease.limit", THROTTLE, EGRESS, r"\bmi:(?:stc|sfq|dmf)\b"),
    # Sender authentication (RFC 7372): the message's sender domain does not pass.
    _s(
        "sender-authentication",
        POLICY,
        MSG,
        r"\bspf\b",
        r"\bdkim\b",
        r"\bdmarc\b",
        r"\bsender policy framework",
        r"\bdomainkeys",
        r"\barc (?:validation|seal|chain)",
        r"\bunauthenticated (?:mail|email|sender|message)s?",
        r"\bsender is unauthenticated",
        r"\brequires? (?:all )?senders? to authenticate",
        r"\b(?:fails?|failed|failing|not passing|not pass) (?:to pass )?(?:sender |the )?"
        r"authentication",
        r"\bauthentication (?:information|checks?|results?|level)\b",
        r"\bspoof(?:ed|ing)?\b",
        r"\banti-?spoof",
        r"\bimpersonat",
        r"\bipaddr is not (?:allowed|authori[sz]ed|permitted) to send (?:mail |email )?"
        r"(?:from|for|on behalf of)",
        r"\binvalid ip for sending (?:mail|email) (?:of|for|from)",
        r"\bmismatch\w* (?:the )?(?:client|sending|connecting) ip",
    ),
    # Our host or HELO name looked up in a list (even a domain list such as URIBL) is an
    # egress problem like an IP listing: before the domain lists below.
    _s(
        "rbl.host-listed",
        RBL,
        EGRESS,
        r"\b(?:helo|ehlo)\b[^.;]{0,60}?\b(?:blocked using|listed|blacklisted|blocklisted)",
        r"\bclient host\b[^;]{0,60}?\b(?:blocked using|listed (?:in|at|on|by))",
        r"\b(?:ip|ipaddr)(?: address)? (?:is |has been )?(?:blocked|blacklisted|blocklisted|"
        r"banned) by\b",
        r"\b(?:reverse dns|rdns|ptr|hostname|host name)(?: entry| record| name)?\b[^.;]{0,20}?"
        r"\bcontains (?:your |the )?(?:ip|ipaddr)",
    ),
    # A listed *domain or URL* (Spamhaus DBL/ZRD, URIBL, SURBL, RHSBLs): the content or
    # the sender domain, not our address. Before the IP lists, which share the words.
    _s(
        "domain-list",
        SPAM,
        MSG,
        r"\bdbl\b",
        r"\bzrd\b",
        r"\buribl\b",
        r"\bsurbl\b",
        r"\brhsbl\b",
        r"\bivmuri\b",
        r"\burl(?:s)?\b[^.;]{0,40}?\b(?:listed|blacklisted|blocklisted|blocked|reputation)",
        r"\b(?:link|uri|url|domain)s? (?:in|of) (?:the |this |your )?(?:message|body|mail|email)"
        r"[^.;]{0,30}?\b(?:listed|blacklisted|blocked|reputation|suspicious|spam)",
        r"\b(?:contains?|containing) (?:a |an )?(?:url|link|domain|uri)s?\b[^.;]{0,40}?"
        r"(?:listed|blacklisted|blocklisted|blocked|spam|suspicious|malicious)",
        r"\bdomain\b(?: \S+)?(?: is| has been)? (?:listed|"
        r"blacklisted|blocklisted|blocked) (?:at|in|on|by|using)",
        r"\b(?:sender|from) (?:address|domain)\b[^.;]{0,40}?\bblocked using\b",
        r"\breputation of the sending domain",
        r"\bdomain(?:'s)? (?:has )?(?:a )?(?:poor|bad|low|negative) "
        r"reputation",
    ),
    # The sender's own address blocked by the recipient or a sender list: policy.
    _s(
        "sender-blocked",
        POLICY,
        MSG,
        r"\bsender (?:address |email )?(?:\S+ )?(?:is |has been )?(?:black|block|deny)-?listed",
        r"\bsender (?:address )?(?:is )?(?:on|in) (?:the |our |a |\S+ )?(?:black|block|deny)-?list",
        r"\b(?:recipient|user|addressee|mailbox owner)(?: has)? (?:blocked|blacklisted|"
        r"rejected|refused) (?:you|the sender|your|this sender|messages|mail|emails)",
        r"\b(?:blocked|blacklisted|blocklisted|banned) by (?:the )?(?:recipient|user|"
        r"addressee|mailbox owner)",
        r"\b(?:refused|rejected) by (?:the )?recipient",
        r"\brecipient (?:has )?blocked",
    ),
    # A missing PTR or TLS is the cause even where the reply says "rate limited".
    _s(
        "policy.reverse-dns",
        POLICY,
        EGRESS,
        r"\bptr\b",
        r"\breverse (?:dns|lookup|mapping|hostname|host name|resolution|name|record)",
        r"\brdns\b",
        r"\bno reverse",
        r"\bfcrdns",
        r"\bforward[- ]confirmed",
        r"\bcannot find your (?:reverse )?(?:hostname|host name)",
        r"\b(?:hostname|host name) (?:does not|doesn'?t|did not|didn'?t) (?:resolve|match)",
        r"\bunresolvable (?:ip|ipaddr|address|host)",
        r"\bno (?:dns|hostname|host name) (?:for|found for) (?:your )?(?:ip|ipaddr|address)",
        r"\b(?:ip|ipaddr)(?: address)? (?:has no|without|with no|does not have) (?:a )?"
        r"(?:reverse|ptr|hostname|dns)",
        r"\bdns (?:ptr|reverse)",
        r"\bunverif(?:y|i)able (?:sending )?(?:ip|ipaddr|host)",
    ),
    _s(
        "policy.tls",
        POLICY,
        EGRESS,
        r"\bstarttls",
        r"\btls\b[^.;]{0,20}?\b(?:required|mandatory|needed|must)",
        r"\b(?:encryption|secure connection|encrypted connection|secure channel) (?:is )?"
        r"(?:required|needed|mandatory)",
        r"\brequiretls",
        r"\bmust (?:use|issue|be sent over) (?:a )?(?:starttls|tls|secure|encrypted)",
        r"\bmust be encrypted",
        r"\bnot (?:over|using|sent over) (?:a )?(?:secure|encrypted|tls)",
        r"\bwasn'?t sent over a tls",
    ),
    # Explicit rate limits, before the IP blocks: "rate limited due to IP reputation"
    # and QQ's "Ip frequency limited [... Blocked IP]" are throttles. On a 4xx, Gmail's
    # "unusual rate of unsolicited mail" is its 4.7.28 deferral; on a 5xx it is a block.
    _s(
        "throttle.explicit",
        THROTTLE,
        EGRESS,
        r"\bunusual (?:rate|amount|volume) of\b",
        r"\b(?:messages?|mail) from ipaddr (?:temporarily )?deferred",
        codes="4",
    ),
    _s(
        "throttle.explicit",
        THROTTLE,
        EGRESS,
        r"\brate[- ]?limit",
        r"\bratelimit",
        r"\bfrequency limit",
        r"\bthrottl",
    ),
    # --- our address on a list or blocked (egress) ----------------------------------
    _s(
        "rbl.dnsbl-name",
        RBL,
        EGRESS,
        r"\bspamhaus",
        r"\bspamcop",
        r"\bbarracuda(?:central| reputation|networks)",
        r"\bbrbl\b",
        r"\bsorbs\b",
        r"\buceprotect",
        r"\bspamrats",
        r"\bpsbl\b",
        r"\bcbl\b",
        r"\babuseat",
        r"\bdnsbls?\b",
        r"\bdnsrbl",
        r"\brbls?\b",
        r"\bmailspike",
        r"\bbackscatterer",
        r"\bgbudb",
        r"\binvaluement",
        r"\bnixspam",
        r"\b0spam",
        r"\bmanitu\b",
        r"\bhostkarma",
        r"\bjunkemailfilter",
        r"\bspameatingmonkey",
        r"\bsenderscore",
        r"\blashback",
        r"\bsenderbase",
        r"\bsbl(?:-xbl)?\b",
        r"\bxbl\b",
        r"\bpbl\b",
        r"\bmail-abuse",
        r"\bdronebl",
        r"\bspamcannibal",
        r"\bcloudmark",
        r"\bivmsip",
        r"\bblocklist\.de",
        r"\bs5h\b",
        r"\bsem-?backscatter",
        r"\bnordspam",
        r"\bswinog",
        r"\bblocked using\b",
        r"\bdenied using\b",
    ),
    _s(
        "rbl.listed",
        RBL,
        EGRESS,
        _NOT + r"\blisted (?:at|in|on|by)\b",
        r"\b(?:is|are|been|currently|ipaddr) (?:\w+ )?(?:black|block|deny|ban)-?listed",
        r"\bblack ?-?list(?:ed|ing)?\b",
        r"\bblock ?-?list(?:ed|ing)?\b",
        r"\bdeny ?-?list(?:ed)?\b",
        r"\bblack listed",
    ),
    _s(
        "rbl.client-blocked",
        RBL,
        EGRESS,
        r"\bclient host\b[^.;]{0,40}?\b(?:blocked|blacklisted|listed|refused|rejected: "
        r"(?:access denied|abus|spam|blacklisted|listed|blocked|your ip|ip))",
        r"\b"
        + _OUR
        + r" (?:mail )?(?:server'?s? |mta'?s? |host'?s? |smtp )?"
        + _HOST
        + r"\b(?: \S+)?(?: address)?(?: (?:is|was|has|have|been|currently|temporarily|"
        r"permanently|now|already))* " + _BLOCKED,
        r"\bipaddr\b(?: \w+)?(?: (?:is|was|has|have|been|currently|temporarily|permanently))* "
        r"(?:blocked|blacklisted|blocklisted|banned|listed|refused|rejected|not allowed|"
        r"denied|on our)",
        r"\b(?:ip|ip address|ipaddr|ip-address|host|server|mta|network)s? (?:\S+ )?(?:has been |"
        r"is |was )?(?:temporarily |permanently )?(?:blocked|banned|blacklisted|blocklisted)",
        r"\b(?:blocked|banned|rejected|refused|denied|blacklisted) (?:because of|due to|for) "
        r"(?:your |the )?(?:ip|sending ip|reputation|abuse|listing|spam from)",
        r"\b(?:mail|traffic|messages|connections?|email) (?:sent )?from (?:your|this) "
        r"(?:ip|ipaddr|ip address|host|server|network)(?: address)? (?:has been |is |are )?"
        r"(?:temporarily |permanently )?(?:blocked|not accepted|rejected|refused|denied)",
        r"\bnot (?:currently )?accept(?:ing|ed)? (?:mail|email|connections|messages|traffic) "
        r"from (?:your|this) (?:ip|ipaddr|host|server|network|address)",
        r"\b(?:connections?|mail|traffic) (?:will )?not (?:be )?accepted from (?:ip|ipaddr|your|"
        r"this)",
        r"\bbanned sending ip",
        r"\b(?:bad|poor|blocked|banned|blacklisted|suspicious) (?:sending |sender |"
        r"client |source )?ip\b",
        r"\bip[- ]based\b",
        r"\b(?:host|network|ip|ipaddr) (?:network |address |range )?(?:is )?not allowed\b",
        r"\bpermanently deferred",
        r"\byour ip\b[^.;]{0,30}?\b(?:is |has been |was )?(?:filtered|blocked|blacklisted|banned|"
        r"listed|rejected|refused|not allowed)",
        r"\bbanned sender\b",
        r"\bpart of their network\b",
        r"\bplease contact your (?:internet service provider|isp)\b",
        r"\bspams? from your ip",
        r"\b(?:you|your server|your system|your mail ?server|your domain|sender host) (?:are|is|"
        r"have been|has been|was) (?:temporarily |permanently |currently )?(?:blocked|banned|"
        r"blacklisted|blocklisted)\b(?! by the recipient)",
        r"\byou are not allowed to connect",
        r"\bnot allowed to connect",
        r"\bconnections? (?:from ipaddr )?(?:not (?:allowed|accepted)|refused|denied|rejected)"
        r"[^.;]{0,20}?\b(?:from|for) (?:your|this|ipaddr)",
    ),
    # --- less, slower, later ----------------------------------------------------------
    _s(
        "throttle.recipient",
        THROTTLE,
        RCPT,
        r"\breceiving (?:mail|messages|email)(?: too quickly| at a rate)",
        r"\brecipient (?:has )?exceeded (?:their|the|its) (?:limit|rate)",
        r"\b(?:user|recipient|mailbox) is receiving",
        r"\bmessages they can receive",
        r"\btoo many (?:messages|mails|emails) (?:for|to) (?:this|the) (?:user|recipient|"
        r"mailbox|address)",
    ),
    _s(
        "throttle.rate",
        THROTTLE,
        EGRESS,
        r"\brate[- ]?limit",
        r"\bratelimit",
        r"\brate (?:exceeded|too high)",
        r"\bthrottl",
        r"\bslow(?:ing)? down",
        r"\b(?:try|sending|send|please) (?:again )?(?:slower|more slowly)",
        r"\btoo (?:many|much)\b[^.;]{0,30}?\b(?:connections?|concurrent|sessions?|messages?|"
        r"mails?|emails?|recipients?|rcpts?|traffic|volume|requests?|invalid|attempts|"
        r"simultaneous|smtp|transactions?|deliveries|data|spam|load)",
        r"\bper transaction",
        r"\bseparate transaction",
        r"\btoo fast\b",
        r"\bunusual (?:rate|volume|amount|traffic|activity)",
        r"\b(?:deferred|rejected|refused|blocked|delayed) due to (?:unexpected |"
        r"high |excessive |unusual )?(?:volume|load|traffic|complaints|user complaints)",
        r"\b(?:exceeded|exceeds|exceeding|reached|over) (?:the |your |its |our |their |a |"
        r"permitted |allowed |maximum |max )*(?:hourly |daily |sending |send |message |"
        r"connection |recipient )?(?:rate|limits?|quota|threshold|number of|allowance|maximum)",
        r"\b(?:daily|hourly|sending|send|message|messages|connection|recipient|outbound|"
        r"user) (?:rate |sending |send |message )?(?:limit|quota|cap)s?\b",
        r"\blimit (?:exceeded|reached|has been reached)",
        r"\bper (?:hour|minute|second|day|session|connection)\b",
        r"\blimits? for how many",
        r"\bmax(?:imum)? number of messages\b",
        r"\bmail flood",
        r"\bmax(?:imum)? (?:number of )?(?:connections|messages?|recipients|sessions|mails?|"
        r"emails?) (?:per|reached|exceeded|allowed)",
        r"\bconcurren(?:t|cy)",
        r"\bcongest",
        r"\boverload",
        r"\bexcessive (?:connections|volume|traffic|load|messages|recipients|rate|mail)",
        r"\bconnection (?:limit|rate|count)",
        r"\b(?:high|heavy|unexpected) (?:volume|load|traffic)",
        r"\bsending quota",
        r"\bquota (?:of|for) (?:messages|emails|outbound|sending)",
        r"\bhas exceeded (?:the |its |their )?(?:allowed|permitted)? ?(?:number|amount|limit)",
        r"\blimit on (?:the )?number of",
        r"\b(?:outgoing|outbound) messages?\b[^.;]{0,30}?\b(?:exceeded|limit)",
    ),
    _s(
        "throttle.busy",
        THROTTLE,
        DEST,
        r"\b(?:server|system|host|service|mail ?server|smtp server|mx|we) (?:is |are )?(?:too |"
        r"currently |very )?busy",
        r"\bbusy\b",
        r"\bload (?:is )?too high",
        r"\bmailer (?:is )?(?:currently )?overloaded",
    ),
    # --- less certain IP readings: reputation, dynamic ranges, "use your ISP" ----------
    _s(
        "rbl.reputation",
        RBL,
        EGRESS,
        r"\b(?:poor|bad|low|negative|insufficient|questionable|very low|none/bad|untrusted) "
        r"(?:ip |sender |sending |email |e-mail |mail |smtp |network |server )?reputation",
        r"\breputation (?:of|for) (?:the |your |this )?(?:sending |connecting )?(?:ip|ipaddr|mta|"
        r"server|host|network|address|sender)",
        r"\b(?:ip|sender|sending|mta|network|address|ipaddr|server|host|smtp) reputation",
        r"\breputation\b[^.;]{0,30}?\b(?:ipaddr|ip)\b",
        r"\brejected by (?:ip )?reputation",
    ),
    _s(
        "rbl.dynamic",
        RBL,
        EGRESS,
        r"\bdynamic(?:ally)?(?:[- ]assigned)? (?:ip|ipaddr|address|range|pool|host|client|"
        r"space|block)",
        r"\bdynamic ips?\b",
        r"\b(?:residential|consumer|end[- ]user|broadband|cable|dsl) (?:ip|ipaddr|address|range|"
        r"network|connection|pool)",
        r"\bdial-?up",
        r"\bdsl\b",
        r"\bnot (?:allowed|permitted|authori[sz]ed) to send (?:email )?directly",
        r"\bsend(?:ing)? (?:mail |email )?directly to our servers",
        r"\buse (?:the |your )?(?:isp|provider|service provider|internet service provider)'?s? "
        r"(?:smtp|mail|outgoing|relay|smarthost)",
        r"\bsmtp relay at your (?:service provider|isp)",
        r"\bzombie",
        r"\bbotnet",
        r"\bcompromised (?:server|host|machine|computer|system|pc)",
        r"\bopen proxy",
        r"\b(?:is|be|as|appears to be) an open (?:proxy|relay)",
        r"\buse the (?:smtp|mail|outgoing) server of your (?:isp|provider)",
        r"\bhijacked",
        r"\bgeneric (?:rdns|hostname|reverse|ptr|host ?name)",
        r"\blooks like (?:a )?(?:dynamic|spammer|residential)",
        r"\bsuspiciously like (?:a )?spammer",
    ),
    # --- the message itself ------------------------------------------------------------
    _s(
        "spam.verdict",
        SPAM,
        MSG,
        r"\bspam\b",
        r"\bspams\b",
        r"\bspammy",
        r"\bspam-?like",
        r"\bunsolicited",
        r"\bjunk ?(?:mail|email)?\b",
        r"\bphish",
        r"\bvirus",
        r"\bmalware",
        r"\bmalicious",
        r"\binfected",
        r"\btrojan",
        r"\bransomware",
        r"\bworm\b",
        r"\bclamav",
        r"\bspamassassin",
        r"\brspamd",
        r"\bbayes",
        r"\bscam\b",
        r"\bfraud",
        r"\bbulk (?:mail|email)",
        r"\bsuspicious (?:content|url|link|message|attachment|file|mail|email|activity|"
        r"characteristics)",
        r"\bmessage (?:is|was|looks|seems) suspicious",
        r"\b(?:banned|blocked|prohibited|forbidden|unacceptable|dangerous|executable|disallowed|"
        r"illegal|unsafe|restricted|blacklisted) (?:file|attachment|extension|content|"
        r"filename|file ?type|file ?name|mime)",
        r"\battachments?\b[^.;]{0,40}?\b(?:not allowed|blocked|prohibited|rejected|banned|"
        r"forbidden|unacceptable|not accepted|not permitted)",
        r"\bcontent (?:filter|rejected|scan|was rejected|not accepted|presents|violat|"
        r"blocked|refused)",
        r"\bmessage content\b",
        r"\b(?:message|mail|email) (?:was |has been )?filtered\b",
        r"\bcontent (?:denied|not allowed)",
        r"\b(?:filtered|blocked|rejected|identified|classified|flagged|detected|quarantined) "
        r"(?:as|by) (?:a |the |our )?(?:content|spam|anti-?spam|filter|junk|bulk)",
        r"\b(?:security|potential security) (?:issue|risk|threat)",
        r"\bthreat\b",
        r"\bhigh (?:spam )?score",
        r"\bspam score",
        r"\bclassified as\b[^.;]{0,15}spam",
    ),
    # --- the receiver's rules, specific (egress-scoped first) -----------------------------
    _s(
        "policy.relay",
        POLICY,
        EGRESS,
        r"\brelay(?:ing)? (?:access )?(?:is )?(?:denied|not permitted|not allowed|prohibited|"
        r"refused|rejected|disabled|forbidden|not authori[sz]ed)",
        r"\bunable to relay",
        r"\b(?:not|never) (?:allowed|permitted|authori[sz]ed) to relay",
        r"\bdo not relay",
        r"\bno relaying",
        r"\brcpthosts",
        r"\brelay (?:not |is not )?(?:permitted|allowed)",
        r"\bnot (?:a )?(?:permitted|valid|allowed) relay",
        r"\bnot (?:configured|setup|set up) to relay",
    ),
    _s(
        "policy.smtp-auth",
        POLICY,
        EGRESS,
        r"\bauthentication (?:is )?required",
        r"\bauth(?:entication)? required",
        r"\bmust (?:first )?(?:be )?authenticat",
        r"\bnot authenticated",
        r"\bauthenticat\w* (?:failed|failure|unsuccessful|credentials invalid|rejected)",
        r"\binvalid (?:credentials|login|username or password)",
        r"\bplease authenticate",
        r"\bsmtp auth",
        r"\bclient was not authenticated",
        r"\banonymous (?:mail|relay|submission)",
        # Smarthost AUTH refusals (RFC 4954 section 6 gives 530, 534, 535, 538, 454):
        # Gmail "535-5.7.8 Username and Password not accepted" (PHPMailer/PHPMailer#546),
        # Mailgun "535 5.7.0 Mailgun is not loving your login or password"
        # (mailgun/documentation#132), Microsoft 365 "535 5.7.139 Authentication
        # unsuccessful, the user credentials were incorrect" and "5.7.57 Client not
        # authenticated to send mail" (docs.bookyourpto.com/features/smtp-troubleshoot),
        # SendGrid "535 Authentication failed: Bad username / password".
        r"\busername and password (?:not accepted|are incorrect|incorrect)",
        r"\bnot loving your login or password",
        r"\bbad username ?/ ?password",
        r"\buser credentials were incorrect",
        r"\bauthentication mechanism is too weak",
        r"\bencryption required for requested authentication mechanism",
        r"\bauthentication credentials invalid",
    ),
    _s(
        "policy.helo",
        POLICY,
        EGRESS,
        r"\b(?:helo|ehlo)\b[^.;]{0,60}?\b(?:invalid|rejected|not (?:a )?(?:valid|fully|fqdn|"
        r"allowed)|fully[- ]qualified|fqdn|syntax|malformed|bad|required|must|forged|resolve|"
        r"unknown|mismatch|match|need|hostname|host name|domain)",
        r"\bbad helo",
        r"\b(?:real|valid|proper|fully.qualified) (?:host ?name|domain)\b[^.;]{0,30}?"
        r"\b(?:helo|ehlo)",
        r"\b(?:invalid|bad|malformed|syntactically invalid|illegal) (?:helo|ehlo)",
    ),
    _s(
        "policy.format",
        POLICY,
        MSG,
        r"\b(?:not |non-?)(?:rfc ?-?\d+ )?compliant",
        r"\brfc ?-?(?:2822|5322|822|2045|5335|6532) (?:compliant|compliance|violation|standard|"
        r"requirements?)",
        r"\bnot rfc\b",
        r"\bviolates? rfc",
        r"\b(?:8bit|bit) data in (?:the )?(?:message )?headers?",
        r"\bmessage-?id\b",
        r"\bmissing (?:or invalid )?(?:from|date|subject|message-id|to|sender|headers?|"
        r"required header)",
        r"\bheaders?\b[^.;]{0,40}?\b(?:missing|invalid|malformed|too long|not (?:compliant|"
        r"allowed|rfc)|duplicate|rejected|syntax|are not)",
        r"\bmalformed",
        r"\bonly one\b[^.;]{0,20}?\bheader",
        r"\bno [\w-]+ (?:field|header)\b",
        r"\bnon-?compliant",
        r"\bnot compliant",
        r"\binvalid (?:from|date|header|mime|message|character|encoding)",
        r"\bfrom:? (?:header|address|field)s? (?:is |are )?(?:missing|invalid|blank|required|not|"
        r"empty)",
        r"\b(?:multiple|more than one) (?:addresses in )?from",
        r"\bblank from",
        r"\bno (?:from|date|subject|message-id) header",
        r"\bmime (?:error|structure|format|violation)",
        r"\b8bit (?:data|characters|content|mime)",
        r"\bbit (?:data|characters|content) (?:is )?not",
        r"\bsmtputf8",
    ),
    _s(
        "policy.sender",
        POLICY,
        MSG,
        r"\bsender (?:address |domain |email )?(?:rejected|refused|denied|not (?:allowed|"
        r"accepted|permitted|authori[sz]ed|valid)|blocked|invalid|unknown|verify failed|"
        r"verification failed|domain (?:not found|does not exist|must exist|must resolve|"
        r"invalid|unknown))",
        r"\b(?:domain|sender domain) of (?:the )?sender (?:address )?(?:\S+ )?(?:does not|"
        r"doesn'?t) (?:exist|resolve)",
        r"\bsender (?:verify|verification|callout|address verification|validation) "
        r"(?:failed|failure|error)",
        r"\bunverified sender",
        r"\b(?:invalid|unroutable|unrouteable|unknown|bad) sender\b",
        r"\b(?:address|identity|identities|sender|domain) (?:is |are )?not verified",
        r"\binvalid dns\b",
        r"\bcould not verify (?:the )?sender",
        r"\bsender callout",
        r"\bmail from (?:address )?(?:\S+ )?(?:rejected|refused|not (?:allowed|accepted))",
        r"\benvelope (?:sender|from) (?:\S+ )?(?:rejected|invalid|blocked|domain|not)",
        r"\b(?:from|sender|sending) domain (?:\S+ )?(?:is )?(?:invalid|not (?:valid|found|allowed)|"
        r"does not exist|unknown)",
        r"\bsend as\b",
        r"\bsend on behalf\b",
        r"\bnot owned by (?:the )?(?:user|sender)",
        r"\brequires? (?:a )?valid sender",
        r"\bvalid sender (?:domain|address) (?:is )?required",
        r"\bunregistered domains?",
        r"\bnull sender",
        r"\bsender (?:address )?has (?:a )?null mx",
    ),
    # A transient state, however permanent the code: "temporarily locked", "address
    # verification in progress", a verification probe that lost its connection.
    _s(
        "temporary-state",
        TEMP,
        DEST,
        r"\btemporar\w* (?:locked|suspended|disabled|blocked|unavailable|out of service|"
        r"failure|error|problem|not available)",
        r"\baddress verification in progress",
        r"\blost connection",
    ),
    # --- the recipient address ------------------------------------------------------------
    _s(
        "no-such-user",
        NO_USER,
        RCPT,
        r"\bno such (?:user|mailbox|recipient|address|account|person|local user|email|alias|"
        r"local part|name|box|domain)",
        r"\b(?:deactivated|disabled|inactive|closed|suspended|locked|blocked|deleted) "
        r"(?:mail ?box|account|address|user|recipient)",
        r"\bno (?:mail ?box|account|user|email)\b[^.;]{0,25}?\b(?:found|available|exists?)\b",
        r"\b(?:recipient|user|address) not (?:in|on) (?:the |our )?(?:\w+ )?list",
        r"\b(?:unknown|invalid|bad|unrecognized|unrecognised|non-?existent|nonexistent|illegal|"
        r"inactive|disabled|undeliverable|unrouteable|unroutable|nonexisting|non-existing) "
        r"(?:local )?(?:user|recipient|mailbox|address|account|addressee|alias|local[- ]?part|"
        r"email address|destination address|rcpt|username|recipient address|mail ?box|"
        r"email account|target)",
        r"\b(?:user|recipient|mailbox|address|account|addressee|alias|local[- ]part|"
        r"email address|email|destination address|rcpt|username|recipient address|mail ?box|"
        r"email account|the account)\b(?: name)?(?: (?!temporar)\S+)?(?: (?:is|was|does|has|"
        r"been|appears|to|be|seems|marked|as|currently))* (?:unknown|not (?:found|known|valid|"
        r"listed|recognized|recognised|existing|exist|available|active|in use|registered)|invalid|"
        r"non-?existent|unavailable|disabled|deactivated|inactive|suspended|closed|terminated|"
        r"deleted|removed|expired|doesn'?t exist|does not exist|no longer (?:exists?|active|"
        r"valid|in use|available|here|used)|unroutable|unrouteable|undeliverable|locked|"
        r"frozen|discontinued)",
        r"\buser (?:name )?unknown",
        r"\bunknown or illegal alias",
        r"\bnot a valid (?:user|recipient|mailbox|address|account|email|rfc-?5321 address)",
        r"\bno (?:mailbox|account|user|email|one) (?:here|by that name|with that name|for|"
        r"with this)",
        r"\bdoes(?:n'?t| not) exist",
        r"\bdoes(?:n'?t| not) have an? (?:\S+ )?account",
        r"\bnot our customer",
        r"\bcannot deliver mail for",
        r"\baddress (?:unknown|invalid|not found|does not exist|not recognized)\b",
        r"\baddress rejected\W*$",
        r"\baccount (?:has been |is |was )?(?:disabled|suspended|deactivated|closed|terminated|"
        r"expired|inactive|deleted|frozen|locked|cancel+ed|blocked|archived|isblocked)",
        r"\bmailbox (?:has been |is )?(?:disabled|inactive|closed|deleted|suspended|locked|"
        r"unavailable|not available|not found|blocked|archived)",
        r"\binactivity\b",
        r"\barchived (?:recipient|mailbox|account)",
        r"\b(?:unable|not able|weren'?t able|couldn'?t|could not) (?:to )?find (?:the )?"
        r"(?:recipient|destination) (?:domain|address|mailbox)",
        r"\bnot (?:our|a local|a known) (?:user|customer|recipient)",
        r"\bnot (?:on|in) (?:the |our )?(?:valid )?(?:recipient|user|address|mailbox) list",
        r"\bnot (?:an? )?(?:active|valid|existing|registered) (?:\w+ )?(?:user|account|mailbox|"
        r"address|recipient)",
        r"\brecipient (?:not found|unknown|invalid|rejected: (?:no|unknown|invalid|user))",
        r"\baddressee unknown",
        r"\b(?:host|domain|hostname) (?:name )?(?:\S+ )?(?:not found|unknown|does not exist|"
        r"doesn'?t exist|could not be found|not resolv\w*|has no mx)",
        r"\bnull mx",
        r"\bno (?:mx|mail exchanger|mx record|dns record|valid mx)s?\b",
        r"\bname service error",
        r"\bnxdomain",
        r"\bunrout(?:e)?able (?:mail )?domain",
        r"\bdomain (?:is )?(?:not (?:valid|configured|hosted|served|handled|found|registered)|"
        r"invalid|unknown|disabled|expired)",
        r"\bnot (?:a )?(?:hosted|valid|local) domain",
        r"\bmoved\b",
        r"\bforwarding address",
        r"\bno longer (?:with|at|employed|works|working|valid|in use|available)",
        r"\bleft (?:the|our) (?:company|organi[sz]ation)",
        r"\bchanged (?:his|her|their|the) (?:email )?address",
        r"\bunknown (?:in|at) (?:virtual|local|relay)",
        r"\butilisateur inconnu",
        r"\bunbekannt",
        r"\bbenutzer (?:unbekannt|existiert nicht)",
        r"\bdestinatario (?:inexistente|sconosciuto|desconocido)",
        r"\bdoesn'?t have a\b",
        r"\bmailbox unavailable",
    ),
    # A blocked *message* with nothing more specific (no IP, no rule named) is a filter's
    # verdict; after the specific policy readings, which Gmail words the same way.
    _s(
        "spam.message-blocked",
        SPAM,
        MSG,
        r"\b(?:message|mail|email) (?:was |has been |is )?blocked\b(?! because)",
    ),
    # --- the receiver's rules, general ---------------------------------------------------
    _s(
        "policy.restricted",
        POLICY,
        RCPT,
        r"\bnot (?:on|in) (?:the |our |my )?(?:allow|white|safe|approved|permitted|accepted)[- ]?"
        r"(?:list|senders)",
        r"\bwhite-?list",
        r"\ballow-?list",
        r"\bonly (?:accepts?|receives?) (?:mail|messages|emails?|email) from",
        r"\bonly (?:authori[sz]ed|approved|internal|members|allowed|permitted)",
        r"\b(?:restricted|moderated) (?:group|list|recipient|address|mailbox|distribution)",
        r"\bnot (?:allowed|authori[sz]ed|permitted) to (?:send|post|email|mail|deliver|submit|"
        r"write)",
        r"\b(?:sender|you) (?:is |are )?not (?:allowed|authori[sz]ed|permitted|approved)",
        r"\bdoes not accept (?:mail|messages|email)",
        r"\bexternal (?:senders?|mail|email|messages)\b[^.;]{0,30}?\b(?:not|are not|blocked|"
        r"rejected|allowed)",
        r"\bgroup\b[^.;]{0,40}?\b(?:restrict|only|not allowed|moderat)",
        r"\bdelivery not authori[sz]ed",
        r"\bdelivery (?:is )?not (?:allowed|permitted) to",
        r"\bnot authori[sz]ed\b",
        r"\bpermission",
        r"\badministrative(?:ly)? prohibit",
        r"\benvelope blocked",
        r"\brecipient (?:address )?(?:is )?restricted",
        r"\brecipient(?:'s)? preferences?",
        r"\b(?:cannot|can'?t|may not) send (?:email|mail|messages) to\b",
    ),
    _s(
        "policy.generic",
        POLICY,
        MSG,
        r"\bpolic(?:y|ies)\b",
        r"\bprohibited\b",
        r"\bforbidden\b",
        r"\baccess denied",
        r"\bnot permitted\b",
        r"\bblocked\b",
        generic=True,
    ),
    # --- temporary, for no reason above --------------------------------------------------
    _s(
        "temporary",
        TEMP,
        DEST,
        r"\btry (?:again )?later",
        r"\btry again\b",
        r"\bretry\b",
        r"\btemporar(?:y|ily)",
        r"\blocal error",
        r"\berror in processing",
        r"\binternal (?:server )?error",
        r"\bserver error",
        r"\bprocessing error",
        r"\b(?:unable|not able|cannot|can'?t) (?:to )?(?:process|complete|handle|connect|"
        r"establish|deliver|accept)",
        r"\bresources? (?:temporarily )?(?:unavailable|exhausted|problem|shortage)",
        r"\binsufficient (?:system|server)",
        r"\bsystem (?:storage|resources|error|problem|failure|is full|full)",
        r"\bout of memory",
        r"\bdisk (?:full|space)",
        r"\btimed? ?out\b",
        r"\btimeout",
        r"\bconnection (?:lost|dropped|reset|timed out|closed|interrupted|refused)",
        r"\bservice (?:is )?(?:not |temporarily |currently )?(?:un)?available",
        r"\bshutting down",
        r"\bclosing (?:transmission )?channel",
        r"\bdeferred\b",
        r"\bbackend",
        r"\bdatabase",
        r"\bmaintenance",
        r"\bunavailable\b",
        r"\bno route to host",
        r"\b(?:network|host) (?:is )?unreachable",
        r"\bexpired\b",
        r"\bcome back later",
        r"\bqueue (?:is )?full",
        r"\bthe server is (?:not ready|unable)",
        generic=True,
    ),
    _s("temporary", TEMP, DEST, r"\btoo many errors", codes="4"),
    # --- permanent, for no reason above ---------------------------------------------------
    _s(
        "protocol",
        PERM,
        DEST,
        r"\bsyntax",
        r"\b(?:command|cmd) (?:not )?(?:unrecognized|recognized|implemented|allowed|understood|"
        r"rejected)",
        r"\bunrecognized command",
        r"\bunknown command",
        r"\bbad sequence",
        r"\bout of sequence",
        r"\bnot implemented",
        r"\binvalid (?:command|argument|parameter|syntax)",
        r"\bparameters? not (?:recognized|implemented)",
        r"\bline too long",
        r"\bprotocol (?:error|violation)",
        r"\bpipelining",
        r"\bimproper use",
        r"\bunexpected (?:command|data|input)",
        r"\b(?:helo|ehlo|mail|rcpt|data) (?:command )?(?:first|required)",
        r"\bsend (?:helo|ehlo|mail|rcpt) first",
        r"\bnested mail command",
        r"\bno valid recipients",
        r"\bneed (?:mail|rcpt|helo|ehlo)",
        r"\bsmuggl",
    ),
    _s(
        "permanent",
        PERM,
        MSG,
        r"\brequested action (?:not taken|aborted)",
        r"\btransaction failed",
        r"\bpermanent(?:ly)? (?:failure|error|rejected|refused|fatal)",
        r"\bdelivery (?:failed|failure|not possible|error)",
        r"\b(?:message|mail|email) (?:was )?(?:rejected|refused|not accepted|denied|"
        r"not allowed)",
        r"\brejected\b",
        r"\breject\b",
        r"\brefused\b",
        r"\bdenied\b",
        r"\bnot accepted\b",
        r"\bundeliverable\b",
        codes="5",
        generic=True,
    ),
)
