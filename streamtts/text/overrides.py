"""Pronunciation facts that pypinyin's dictionaries get wrong or cannot know without context.

Data only; the rules that use it live in ``g2p.py``. To fix a word, add it to
``WORD_READINGS`` (it is also added to the segmenter so it is cut as one word) and a test to
``tests/test_frontend_g2p.py``.
"""

from __future__ import annotations

# word -> space-separated tone3 syllables, one per character.
WORD_READINGS: dict[str, str] = {
    "流血": "liu2 xue4",
    "出血": "chu1 xue4",
    "一觉醒来": "yi1 jiao4 xing3 lai2",
    "睡一觉": "shui4 yi1 jiao4",
    "午觉": "wu3 jiao4",
    "数钱": "shu3 qian2",
    "数一数": "shu3 yi5 shu3",
    "银行行长": "yin2 hang2 hang2 zhang3",
    "行长": "hang2 zhang3",
    "和面": "huo2 mian4",
    "舍不得": "she3 bu5 de5",
    "了不得": "liao3 bu5 de2",
    "怪不得": "guai4 bu5 de5",
    "量一量": "liang2 yi5 liang2",
    "长了": "zhang3 le5",
    "长得": "zhang3 de5",
    "长出": "zhang3 chu1",
    "长满": "zhang3 man3",
    "长高": "zhang3 gao1",
    "长胖": "zhang3 pang4",
    "长成": "zhang3 cheng2",
    "一觉": "yi1 jiao4",
    "大夫": "dai4 fu5",
    "朝鲜": "chao2 xian3",
    "花岗岩": "hua1 gang1 yan2",
    "转动": "zhuan4 dong4",
    "琢磨": "zuo2 mo5",
    "缅甸": "mian3 dian4",
    "框架": "kuang4 jia4",
    "希特勒": "xi1 te4 le4",
    "接应": "jie1 ying4",
    "屋脊": "wu1 ji3",
    "布什": "bu4 shi2",
    "刘少奇": "liu2 shao4 qi2",
    "全长": "quan2 chang2",
    "体长": "ti3 chang2",
    "处在": "chu3 zai4",
    "身着": "shen1 zhuo2",
    "衣着": "yi1 zhuo2",
    "妻子": "qi1 zi5",
    "东西": "dong1 xi5",  # "thing"; the compass sense (东西方向) is rarer in running text
    "还有": "hai2 you3",
    "还是": "hai2 shi4",
}

# Single-character words whose reading depends on the next word's first character.
# char -> (next-word first characters, reading)
NEXT_CHAR_READINGS: dict[str, tuple[str, str]] = {
    "还": ("钱书债款给清账", "huan2"),  # 还钱 / 还书 / 还给: give back
    "重": ("来做写读考选播装启排", "chong2"),  # 重来 / 重做: again
}

# Single-character words whose most common reading alone differs from pypinyin's default:
# 教 "to teach" (教我; nouns come in words: 教育), 长 "long" (很长; "grow" comes in words:
# 长大, 长得), 弹 "to play" (弹吉他), 似 (好似).
SINGLE_READINGS: dict[str, str] = {"教": "jiao1", "长": "chang2", "弹": "tan2", "似": "si4"}

# 只 after a numeral or demonstrative is the measure word zhi1 (两只猫), not "only".
ZHI1_AFTER = frozenset("一二三四五六七八九十两几这那每哪半")

# Words before a lone 得 that make it the modal "must" (dei3): subjects and adverbs.
DEI_BEFORE = frozenset(
    "我 你 他 她 它 您 咱 我们 你们 他们 她们 咱们 大家 谁 就 还 也 都 总 可 又 非 必须 总得 真".split()
)

# Words ending in 儿 where 儿 is a full syllable ("child", "son", literary "little"), not the
# erhua suffix. Matched as suffixes of the segmented word.
NOT_ERHUA = frozenset(
    "女儿 婴儿 幼儿 孤儿 男儿 健儿 胎儿 患儿 少儿 孙儿 侄儿 宠儿 混血儿 新生儿 早产儿 幸运儿 "
    "弄潮儿 宁馨儿 低能儿 流浪儿 妻儿 乞儿 弃儿 产儿 育儿 养儿 生儿 犬儿 麟儿 娇儿 我儿 吾儿 "
    "花儿 鸟儿 马儿 虫儿 猫儿 狗儿 鱼儿".split()
)

# Words whose last syllable is unstressed (neutral tone) in standard Mandarin but that pypinyin
# reads with a full tone. The model was trained on recordings labelled as spoken, so these matter.
NEUTRAL_LAST = frozenset("""
起来 下来 回来 出来 进来 过来 上来 回去 出去 进去 下去 上去 时候 学生 事情 先生 眼睛 明白
心里 夜里 消息 喜欢 朋友 认识 姑娘 师父 师傅 清楚 晚上 早上 名字 太阳 厉害 棉花 主意 味道
对付 情形 老爷 教训 照顾 耳朵 聪明 麻烦 热闹 玻璃 招呼 规矩 棺材 讲究 脾气 时辰 力气 客气
胳膊 屁股 特务 嘴巴 豆腐 运气 月亮 包袱 外边 里边 前边 后边 左边 右边 东边 西边 南边 北边
上边 下边 老实 打量 葫芦 方丈 报酬 葡萄 戒指 动弹 帐篷 活泼 窗户 骆驼 妖精 耽误 甘蔗 乡下
护士 吆喝 蘑菇 眉毛 伺候 秀才 衣服 休息 漂亮 关系 告诉 地方 舒服 丈夫 收拾 结实 商量 故事
打扮 脑袋 头发 知道 亲戚 苍蝇 力量 部分 学问 生意 买卖 芝麻 琵琶 核桃 队伍 庄稼 合同 算盘
委屈 糊涂 吩咐 嘱咐 咳嗽 凑合 应付 干净 凉快 痛快 本事 行李 人家 多少 窝囊 扎实 张罗 溜达
稀罕 冤家 亲家 能耐 云彩 扫帚 笤帚 脊梁 柴火 迷糊 模糊 啰嗦 哆嗦 嘀咕 折腾 将就 提防 困难
""".split())

# Reduplicated words (AA) whose second syllable is unstressed: kinship and other nouns, and
# verbs said "for a moment" (看看, 想想 -> xiang2 xiang5).
NEUTRAL_AA_NOUNS = frozenset("爸妈哥姐弟妹爷奶叔姑舅婶伯姥娃宝婆公娘太谢猩")
NEUTRAL_AA_VERBS = frozenset("看想试说听走聊谈问找尝学练歇坐玩转逛瞧猜摸闻讲查算洗擦动跑跳写读唱笑")

# 子 after these is the full syllable zi3 (a morpheme: particle, master, seed), not the noun
# suffix zi5 that pypinyin assumes for any word it does not list.
ZI3_AFTER = frozenset("电原分离粒质中量光因男女孔孟庄墨荀太天公君游学才赤弟莲瓜石棋卵精孢王长"
                      "次母父诸世臣浪逆骄爱独养孝")
